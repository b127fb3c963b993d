"""A topology as the daemon would send it: a Common Runtime web dyno, a Private Space with two
dynos, one stray port and two differences, for the renderers' tests."""

from __future__ import annotations

from dynod.inspect.model import Bridge, Dyno, NftSet, Port, Problem, Topology


def topology() -> Topology:
    web = Dyno(
        app="sushi",
        name="web.1",
        space="",
        state="up",
        netns="dynod-sushi.web.1",
        netns_exists=True,
        veth="dynod-1",
        veth_index=7,
        eth0_index=2,
        address="172.16.0.6/30",
        gateway="172.16.0.5",
        routes=("default via 172.16.0.5 dev eth0", "172.16.0.4/30 dev eth0"),
        bridge="dynod0",
        web_port=41234,
    )
    api = Dyno(
        app="api",
        name="web.1",
        space="acme",
        state="up",
        netns="dynod-api.web.1",
        netns_exists=True,
        veth="dynod-2",
        veth_index=9,
        eth0_index=2,
        address="10.1.0.6/30",
        gateway="10.1.0.5",
        routes=("default via 10.1.0.5 dev eth0",),
        bridge="dynods1",
        web_port=40000,
        dns=("1.web.api.app.localspace", "web.api.app.localspace"),
    )
    worker = Dyno(
        app="api",
        name="worker.1",
        space="acme",
        state="crashed",
        netns="dynod-api.worker.1",
        netns_exists=False,
        veth="dynod-3",
        veth_index=None,
        eth0_index=None,
        address=None,
        gateway="10.1.0.9",
        routes=(),
        bridge="dynods1",
        web_port=None,
    )
    flags = {"isolated": True, "learning": False, "flood": False}
    return Topology(
        prefix="dynod",
        scope="everything",
        bridges=(
            Bridge(
                "dynod0",
                4,
                "",
                "172.16.0.0/12",
                ("172.16.0.1/30", "172.16.0.5/30"),
                (Port("dynod-1", 7, 2, dyno="sushi/web.1", fdb=("0a:58:ac:10:00:06",), **flags),),
            ),
            Bridge(
                "dynods1",
                5,
                "acme",
                "10.1.0.0/16",
                ("10.1.0.1/30", "10.1.0.5/30"),
                (
                    Port("dynod-2", 9, 2, dyno="api/web.1", **flags),
                    Port("dynod-7", 11, 2, isolated=False, learning=True, flood=True, dyno=""),
                ),
                nat_ip="192.0.2.10",
            ),
        ),
        dynos=(web, api, worker),
        sets=(
            NftSet("bridge", "dynod", "ports", ('"dynod-1" . 0a:58:ac:10:00:06 . 172.16.0.6',)),
            NftSet("inet", "dynod", "web", ("172.16.0.6 . 41234", "10.1.0.66 . 9999")),
            NftSet("inet", "dynod", "nat", ("10.1.0.0/16 : 192.0.2.10",)),
        ),
        dns={
            "acme": {
                "web.api.app.localspace": ["10.1.0.6"],
                "api.herokuapp.localspace": ["10.1.0.1"],
            }
        },
        problems=(
            Problem("missing", "veth dynod-3", "api/worker.1's; `ip link show dynod-3`"),
            Problem("stray", "element 10.1.0.66 . 9999", "in set inet dynod web"),
        ),
    )
