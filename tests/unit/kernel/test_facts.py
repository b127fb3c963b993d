"""A dyno's network facts (dynod/kernel/facts.py): one frozen value, with the web target the
control side gives, and a new value for a restart's new PORT."""

from __future__ import annotations

import dataclasses

import pytest

from dynod.kernel.addressing import Pool
from dynod.kernel.facts import describe
from dynod.kernel.firewall import Port, WebTarget

SUBNET = Pool("172.16.0.0/12").subnet(3)


def test_the_facts_are_the_allocation_s() -> None:
    facts = describe("p-app.web.1", "p-7", "p0", SUBNET, 5001)
    assert (facts.address, facts.gateway, facts.prefixlen) == ("172.16.0.14", "172.16.0.13", 30)
    assert facts.port == Port("p-7", SUBNET.dyno_mac, "172.16.0.14")
    assert facts.web == WebTarget("172.16.0.14", 5001)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.veth = "p-8"  # type: ignore[misc]


def test_no_web_port_no_web_target() -> None:
    facts = describe("p-app.worker.1", "p-7", "p0", SUBNET, None)
    assert facts.web is None
    assert facts.on_port(5002).web is None  # a worker never becomes reachable by the router


def test_a_new_port_is_a_new_value_with_the_same_network() -> None:
    old = describe("p-app.web.1", "p-7", "p0", SUBNET, 5001)
    new = old.on_port(5002)
    assert new.web == WebTarget("172.16.0.14", 5002)
    assert old.web == WebTarget("172.16.0.14", 5001)  # untouched
    assert dataclasses.replace(new, web=old.web) == old
