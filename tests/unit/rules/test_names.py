"""The Heroku model's names (dynod/rules/names.py): apps, process types, dynos, Procfiles, spaces,
ranges, NAT addresses and upstream resolvers. No root needed."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.rules import names


@pytest.mark.parametrize("good", ["sushi", "abc", "my-app-2", "a" + "b" * 28 + "c"])
def test_app_names_heroku_accepts(good: str) -> None:
    assert names.check_app(good) == good


@pytest.mark.parametrize("bad", ["", "ab", "Sushi", "1app", "app-", "a_b", "a" * 31, "sushi.x"])
def test_app_names_heroku_refuses(bad: str) -> None:
    with pytest.raises(DynodError) as err:
        names.check_app(bad)
    assert "invalid app name" in err.value.problem and err.value.fix


@pytest.mark.parametrize("bad", ["", "web.1", "a b", "x" * 129, "release"])
def test_process_types_refused(bad: str) -> None:
    with pytest.raises(DynodError):
        names.check_process_type(bad)


def test_process_types_accepted() -> None:
    for good in ("web", "worker", "clock_2", "Web-X", "x" * 128):
        assert names.check_process_type(good) == good


def test_dyno_names_and_numbers() -> None:
    assert names.parse_dyno_name("web.1") == ("web", 1)
    assert names.parse_dyno_name("my_worker.12") == ("my_worker", 12)
    for bad in ("web", "web.0", "web.x", ".1", "web.01"):
        with pytest.raises(DynodError):
            names.parse_dyno_name(bad)
    assert names.lowest_free_number(set()) == 1
    assert names.lowest_free_number({1, 2, 4}) == 3


@pytest.mark.parametrize("good", ["acme", "a-b", "abc", "1abc", "acme-prod-2"])
def test_space_names_accepted(good: str) -> None:
    assert names.check_space(good) == good


@pytest.mark.parametrize("bad", ["", "ab", "Acme", "a--b", "-ab", "ab-", "a_b", "a.b", "acme "])
def test_space_names_refused(bad: str) -> None:
    with pytest.raises(DynodError) as err:
        names.check_space(bad)
    assert "invalid space name" in err.value.problem and err.value.fix


def test_cidrs_are_canonical_and_host_bits_are_refused_with_the_range_meant() -> None:
    assert names.check_cidr("203.0.113.0/24") == "203.0.113.0/24"
    assert names.check_cidr("0.0.0.0/0") == "0.0.0.0/0"
    assert names.check_cidr("198.51.100.7") == "198.51.100.7/32"
    with pytest.raises(DynodError) as err:
        names.check_cidr("203.0.113.5/24")
    assert "host bits" in err.value.problem and "203.0.113.0/24" in err.value.fix
    for bad in ("", "x", "10.0.0.0/33", "::/0", " 10.0.0.0/8", "10.0.0.0/8 "):
        with pytest.raises(DynodError):
            names.check_cidr(bad)


def test_space_ranges_are_private_slash16s() -> None:
    for good in ("10.1.0.0/16", "172.20.0.0/16", "192.168.0.0/16"):
        assert names.check_space_cidr(good) == good
    for bad in ("10.1.0.0/17", "10.0.0.0/8", "11.0.0.0/16", "10.1.2.0/16", "nope"):
        with pytest.raises(DynodError):
            names.check_space_cidr(bad)


def test_nat_addresses() -> None:
    assert names.check_nat_ip("192.0.2.10") == "192.0.2.10"
    for bad in ("", "x", "127.0.0.1", "0.0.0.0", "169.254.0.1", "224.0.0.1", "10.0.0.0/8", "::1"):
        with pytest.raises(DynodError):
            names.check_nat_ip(bad)


def test_upstream_resolvers() -> None:
    assert names.parse_upstream("192.0.2.53") == ("192.0.2.53", 53)
    assert names.parse_upstream("192.0.2.53:5353") == ("192.0.2.53", 5353)
    assert names.parse_upstream("2001:db8::53") == ("2001:db8::53", 53)
    assert names.parse_upstream("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    assert names.parse_upstream("[::1]") == ("::1", 53)
    for bad in ("", "dns.example", "1.1.1.1:", "1.1.1.1:0", "1.1.1.1:65536", "1.1.1.1:+53",
                "[1.1.1.1]:53", "[::1]x", "[::1]:", "0.0.0.0"):  # fmt: skip
        with pytest.raises(DynodError):
            names.parse_upstream(bad)


def test_space_names_are_at_most_30_characters() -> None:
    assert names.check_space("a" * 30) == "a" * 30
    for bad in ("a" * 31, "a" * 10_000):
        with pytest.raises(DynodError) as err:
            names.check_space(bad)
        assert "invalid space name" in err.value.problem and "3 to 30 characters" in err.value.fix
        assert len(err.value.problem) < 100  # a huge name is not echoed whole
