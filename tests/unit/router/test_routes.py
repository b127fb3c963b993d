"""The router's access policy, as a value: RouteTable.build and RouteTable.resolve."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dynod.router.routes import Backend, Refused, RouteTable, backend
from dynod.router.server import Router
from dynod.state.store import App, Dyno

SPACE_CIDR = "10.20.0.0/24"


def dyno(app: str, ptype: str, number: int, state: str = "up", port: int | None = 5000) -> Dyno:
    return Dyno(
        id=hash((app, ptype, number)) & 0xFFFF,
        app=app,
        type=ptype,
        number=number,
        state=state,
        slot=number,
        ip=f"172.16.0.{4 * number + 2}",
        port=port,
        pid=None,
        pid_start=None,
        netns="",
        veth="",
        command="",
        cwd="/",
        uid=0,
        gid=0,
    )


def table(trusted: Sequence[str] = ("0.0.0.0/0",), internal: bool = False) -> RouteTable:
    apps = [App("common"), App("private", "ps", internal_routing=internal)]
    dynos = [
        dyno("common", "web", 1),
        dyno("common", "web", 2, state="starting"),
        dyno("common", "web", 3, port=None),
        dyno("common", "worker", 1),
        dyno("common", "web", 4),
        dyno("private", "web", 1),
    ]
    return RouteTable.build(apps, dynos, {"ps": SPACE_CIDR}, {"ps": trusted})


def test_unknown_app_is_none() -> None:
    assert table().resolve("nope", "127.0.0.1") is None
    assert RouteTable().resolve("common", "127.0.0.1") is None


def test_common_runtime_app_serves_its_up_web_dynos_in_order() -> None:
    assert table().resolve("common", "192.0.2.1") == (
        Backend("web.1", "172.16.0.6", 5000),
        Backend("web.4", "172.16.0.18", 5000),
    )


def test_app_without_up_web_dynos_has_no_backends() -> None:
    built = RouteTable.build([App("idle")], [dyno("idle", "web", 1, state="crashed")], {}, {})
    assert built.resolve("idle", "127.0.0.1") == ()


def test_space_app_outside_trusted_ranges_is_refused() -> None:
    narrow = table(trusted=["198.51.100.0/24"])
    assert narrow.resolve("private", "198.51.100.7") == (Backend("web.1", "172.16.0.6", 5000),)
    with pytest.raises(Refused, match="203.0.113.9 is not in the trusted IP ranges of space ps"):
        narrow.resolve("private", "203.0.113.9")
    with pytest.raises(Refused):
        table(trusted=[]).resolve("private", "127.0.0.1")


def test_space_app_is_open_inside_its_space_whatever_it_trusts() -> None:
    assert table(trusted=[]).resolve("private", "10.20.0.9") == (
        Backend("web.1", "172.16.0.6", 5000),
    )


def test_ipv6_client_is_never_trusted() -> None:
    with pytest.raises(Refused):
        table().resolve("private", "::1")


def test_internal_routing_app_exists_only_inside_its_space() -> None:
    internal = table(internal=True)
    assert internal.resolve("private", "10.20.0.9") == (Backend("web.1", "172.16.0.6", 5000),)
    assert internal.resolve("private", "127.0.0.1") is None  # even though 0.0.0.0/0 is trusted


def test_app_of_a_space_the_table_does_not_know_trusts_nobody() -> None:
    built = RouteTable.build(
        [App("a", "gone"), App("b", "gone", internal_routing=True)], [], {}, {}
    )
    with pytest.raises(Refused):
        built.resolve("a", "127.0.0.1")
    assert built.resolve("b", "127.0.0.1") is None


def test_table_is_a_snapshot() -> None:
    apps = [App("common")]
    dynos = [dyno("common", "web", 1)]
    built = RouteTable.build(apps, dynos, {}, {})
    apps.append(App("later"))
    dynos.clear()
    assert built.resolve("later", "127.0.0.1") is None
    assert built.resolve("common", "127.0.0.1") == (Backend("web.1", "172.16.0.6", 5000),)
    with pytest.raises(TypeError):
        built.apps["x"] = built.apps["common"]  # type: ignore[index]


def test_router_update_replaces_the_table() -> None:
    """update() swaps what the router asks per request, without a restart."""

    async def main() -> tuple[bytes, bytes]:
        router = Router(RouteTable().resolve, lambda line, app: None)
        await router.start("127.0.0.1", 0)
        try:
            before = await get(router.port)
            router.update(RouteTable.build([App("common")], [], {}, {}))
            after = await get(router.port)
        finally:
            await router.close()
        return before, after

    async def get(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: common.localhost\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        return data.split(b"\r\n", 1)[0]

    before, after = asyncio.run(asyncio.wait_for(main(), 10))
    assert before == b"HTTP/1.1 404 Not Found"
    assert after == b"HTTP/1.1 503 Service Unavailable"  # H14: the app exists, no web dynos


def test_one_dyno_s_change_gives_the_table_a_whole_build_would() -> None:
    """with_dyno (what one web dyno's start or stop pushes) moves only that dyno, in number
    order, and leaves every other app and the spaces as they were."""
    apps = [App("sushi"), App("ramen")]
    dynos = [dyno("sushi", "web", n) for n in (1, 3)] + [dyno("ramen", "web", 1)]
    before = RouteTable.build(apps, dynos, {}, {})
    web2 = dyno("sushi", "web", 2)
    added = before.with_dyno("sushi", "web.2", backend(web2))
    # the state lists dynos by type and number, as the whole build gets them
    assert added == RouteTable.build(apps, [dynos[0], web2, *dynos[1:]], {}, {})
    assert [b.dyno for b in added.apps["sushi"].backends] == ["web.1", "web.2", "web.3"]
    removed = added.with_dyno("sushi", "web.1", None)
    assert removed == RouteTable.build(apps, [web2, *dynos[1:]], {}, {})
    assert removed.apps["ramen"] is before.apps["ramen"]
    assert (
        before.apps["sushi"].backends
        == RouteTable.build(apps, dynos, {}, {}).apps["sushi"].backends
    )  # the old table is untouched
    assert backend(dyno("sushi", "web", 4, state="starting")) is None
    assert backend(dyno("sushi", "worker", 1)) is None
