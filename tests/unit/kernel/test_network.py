"""A dyno's kernel names (dynod/kernel/network.py). No root needed."""

from __future__ import annotations

import pytest

from dynod.kernel.network import Names


def test_kernel_names_fit_and_are_prefixed() -> None:
    n = Names("dynod")
    assert n.bridge == "dynod0"
    assert n.veth(0xFFFFFFFF) == "dynod-ffffffff" and len(Names("abcdef").veth(0xFFFFFFFF)) == 15
    assert n.veth_pattern.fullmatch("dynod-1a") and not n.veth_pattern.fullmatch("dynodx-1a")
    assert n.netns("sushi", "web", 1) == "dynod-sushi.web.1"
    assert n.netns("abc-web", "x", 1) != n.netns("abc", "web-x", 1)
    assert n.owns_netns("dynod-sushi.web.1") and not n.owns_netns("dynodx-sushi.web.1")
    for bad in ("Dynod", "d", "toolongx", "1ab", "a-b"):
        with pytest.raises(ValueError):
            Names(bad)


def test_every_bridge_of_ours_matches_and_nothing_else() -> None:
    pattern = Names("dynod").bridge_pattern
    for ours in ("dynod0", "dynod0-1", "dynods3", "dynods3-12"):
        assert pattern.fullmatch(ours)
    for other in ("dynod-1a", "dynodx0", "dynod1", "dynods-1", "docker0", "dynod0-"):
        assert not pattern.fullmatch(other)
