"""Space ranges, trusted IPs and NAT addresses (dynod/rules/spaces.py). No root needed."""

from __future__ import annotations

import ipaddress

import pytest

from dynod.errors import DynodError


def test_space_ranges_are_picked_and_checked() -> None:
    from dynod.rules import spaces

    used = [ipaddress.IPv4Network("10.0.0.0/16"), ipaddress.IPv4Network("10.1.5.0/24")]
    assert str(spaces.next_free_range(used)) == "10.2.0.0/16"
    with pytest.raises(DynodError) as err:
        spaces.check_range_free(ipaddress.IPv4Network("10.1.0.0/16"), {"space acme": used[1]})
    assert "overlaps space acme" in err.value.problem
    assert spaces.allows([ipaddress.IPv4Network("0.0.0.0/0")], "198.51.100.7")
    assert not spaces.allows([ipaddress.IPv4Network("203.0.113.0/24")], "198.51.100.7")
    assert not spaces.allows([ipaddress.IPv4Network("0.0.0.0/0")], "::1")
    with pytest.raises(DynodError) as err:
        spaces.check_nat_address("198.51.100.9", {"192.0.2.2"}, [])
    assert "not an address of this host" in err.value.problem
