"""Each dyno's network facts are computed once (dynod/control/networks.py): the kernel side is
handed the very facts computed at allocation, a restart's new PORT hands new facts with the new
web target, and an adopted dyno's facts are computed from its row once. No root needed."""

from __future__ import annotations

from dynod.control.networks import Networks, allocated
from dynod.kernel.addressing import Pool
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.firewall import WebTarget
from dynod.kernel.machine import Net
from dynod.rules import names
from tests.unit.control.test_supervisor import World, run, until
from tests.unit.control.test_supervisor import world as world  # noqa: F401 - the fixture


def test_the_kernel_is_handed_the_allocation_s_facts(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("exec sleep 30", ptype=names.WEB_TYPE)
        facts = world.allocated(dyno)
        await world.supervisor.launch(dyno, facts)
        handed = [(what, f) for what, f in world.kernel.handed]
        assert [what for what, _ in handed] == ["attach", "spawn"]
        assert all(f is facts for _, f in handed)  # the same value, not recomputed
        assert facts.web == WebTarget(dyno.ip, dyno.port or 0)
        assert world.kernel.web_elements == {facts.web}
        await world.supervisor.stop(dyno, 0)
        assert world.kernel.handed[-1] == ("detach", facts)
        assert world.kernel.web_elements == set()

    run(world, test)


def test_a_worker_has_no_web_target(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("exec sleep 30")
        await world.launch(dyno)
        assert [f.web for _, f in world.kernel.handed] == [None, None]
        await world.supervisor.stop(dyno, 0)

    run(world, test)


def test_a_restart_hands_new_facts_with_the_new_port(world: World) -> None:
    async def test() -> None:
        dyno = world.dyno("sleep 0.2; exit 1", ptype=names.WEB_TYPE)
        first = world.allocated(dyno)
        await world.supervisor.launch(dyno, first)
        await until(lambda: world.kernel.operations(dyno.netns).count("spawn") == 2)
        row = world.row(dyno)
        assert row is not None and row.port != first.web.port  # type: ignore[union-attr]
        spawned = [f for what, f in world.kernel.handed if what == "spawn"]
        assert spawned[0] is first
        assert spawned[1] == first.on_port(row.port)
        assert spawned[1].web == WebTarget(row.ip, row.port or 0)
        assert world.kernel.web_elements == {spawned[1].web}  # the old one moved, not kept
        await world.supervisor.stop(dyno, 0)
        assert world.kernel.handed[-1] == ("detach", spawned[1])

    run(world, test)


def test_an_adopted_dyno_s_facts_come_from_its_row_once(world: World) -> None:
    dyno = world.dyno("true", ptype=names.WEB_TYPE)
    networks = world.supervisor.networks
    facts = networks.of(dyno)
    subnet = world.kernel.net("").pool.subnet(dyno.slot)
    assert facts == allocated(
        dyno.netns, dyno.veth, world.kernel.net(""), subnet, dyno.type, dyno.port
    )
    assert facts.address == dyno.ip  # the row's address is the allocation's
    assert networks.of(dyno) is facts  # kept: not computed again
    assert networks.live() == [facts]
    networks.forget(dyno.id)
    assert networks.of(dyno) is not facts and networks.of(dyno) == facts


def test_each_dyno_s_gateway_routes_name_it_until_it_is_forgotten() -> None:
    """A deleted route names the dyno to look at (health.py): the index follows the facts kept,
    replaced and forgotten, and a newer dyno on a forgotten dyno's /30 keeps its own entry."""
    pool = Pool("172.16.0.0/12")
    net = Net("", "fake0", pool)

    def facts(slot: int) -> DynoNetwork:
        return allocated(f"ns{slot}", f"v{slot}", net, pool.subnet(slot), "worker", None)

    networks = Networks(None, None)  # type: ignore[arg-type]
    first, second = facts(1), facts(2)
    assert first.gateway_routes == (("172.16.0.5", 32), ("172.16.0.4", 30))
    networks.keep(1, first)
    assert [networks.route_owner(*r) for r in first.gateway_routes] == [1, 1]
    networks.keep(1, second)  # new facts on another /30: the old routes are no longer its
    assert [networks.route_owner(*r) for r in first.gateway_routes] == [None, None]
    assert [networks.route_owner(*r) for r in second.gateway_routes] == [1, 1]
    networks.keep(2, second)  # a newer dyno on that /30 before the first is forgotten
    networks.forget(1)
    assert [networks.route_owner(*r) for r in second.gateway_routes] == [2, 2]
    networks.forget(2)
    assert networks.route_owner("172.16.0.9", 32) is None
