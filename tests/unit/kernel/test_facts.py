"""A dyno's network facts (dynod/kernel/facts.py): one frozen value, with the web target the
control side gives, and a new value for a restart's new PORT."""

from __future__ import annotations

import dataclasses

import pytest

from dynod.kernel.addressing import Pool
from dynod.kernel.facts import describe
from dynod.kernel.firewall import Port, WebTarget
from dynod.kernel.machine import Net

SUBNET = Pool("172.16.0.0/12").subnet(3)
NET = Net("", "p0", Pool("172.16.0.0/12"))


def test_the_facts_are_the_allocation_s() -> None:
    facts = describe("p-app.web.1", "p-7", NET, SUBNET, 5001)
    assert (facts.address, facts.gateway, facts.prefixlen) == ("172.16.0.14", "172.16.0.13", 30)
    assert facts.port == Port("p-7", SUBNET.dyno_mac, "172.16.0.14")
    assert facts.web == WebTarget("172.16.0.14", 5001)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.veth = "p-8"  # type: ignore[misc]


def test_no_web_port_no_web_target() -> None:
    facts = describe("p-app.worker.1", "p-7", NET, SUBNET, None)
    assert facts.web is None
    assert facts.on_port(5002).web is None  # a worker never becomes reachable by the router


def test_a_new_port_is_a_new_value_with_the_same_network() -> None:
    old = describe("p-app.web.1", "p-7", NET, SUBNET, 5001)
    new = old.on_port(5002)
    assert new.web == WebTarget("172.16.0.14", 5002)
    assert old.web == WebTarget("172.16.0.14", 5001)  # untouched
    assert dataclasses.replace(new, web=old.web) == old


def test_the_shard_follows_from_the_slot() -> None:
    """Slots 1..shard_ports are shard 0's, the next shard_ports shard 1's...: the lowest free
    slot is taken first, so a shard is used only once the ones before it are full."""
    pool = Pool("10.9.0.0/16")
    net = Net("space", "ps3", pool, "192.0.2.1", shard_ports=2)
    shards = [describe(f"p-a.w.{n}", f"p-{n}", net, pool.subnet(n), None) for n in range(1, 6)]
    assert [f.shard for f in shards] == [0, 0, 1, 1, 2]
    assert {f.bridge for f in shards} == {"ps3"}  # the network's name, whatever the shard
    assert [net.shard_bridge(f.shard) for f in shards[::2]] == ["ps3", "ps3-1", "ps3-2"]
    assert describe("p-a.w.1", "p-1", NET, pool.subnet(256), None).shard == 0  # default 256
    assert describe("p-a.w.1", "p-1", NET, pool.subnet(257), None).shard == 1
