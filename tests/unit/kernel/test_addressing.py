"""Addressing (dynod/kernel/addressing.py): the pool of /30s and the MACs. No root needed."""

from __future__ import annotations

import ipaddress

import pytest

from dynod.errors import DynodError
from dynod.kernel.addressing import Pool, mac_for


def test_pool_carves_slash30s_and_skips_the_bridge_slot() -> None:
    pool = Pool("172.16.0.0/12")
    assert pool.size == 2**18
    assert pool.bridge.gateway == "172.16.0.1"
    first = pool.allocate(set())
    assert first.slot == 1 and first.network == ipaddress.IPv4Network("172.16.0.4/30")
    assert (first.gateway, first.address) == ("172.16.0.5", "172.16.0.6")
    assert pool.allocate({1, 2}).address == "172.16.0.14"
    assert pool.allocate({2}).slot == 1  # the lowest free


def test_pool_exhaustion_error_names_the_fix() -> None:
    pool = Pool("10.0.0.0/28")
    assert pool.size == 4
    with pytest.raises(DynodError) as err:
        pool.allocate({1, 2, 3})
    assert "no free /30 left in 10.0.0.0/28" in err.value.problem and "--cidr" in err.value.fix
    with pytest.raises(DynodError):
        Pool("10.0.0.0/30")


def test_macs_are_derived_from_the_address() -> None:
    assert mac_for("172.16.0.6", 0x58) == "0a:58:ac:10:00:06"
    pool = Pool("172.16.0.0/12")
    s = pool.subnet(1)
    assert s.dyno_mac != s.host_mac
    assert pool.subnet(1).dyno_mac == Pool("172.16.0.0/12").subnet(1).dyno_mac
