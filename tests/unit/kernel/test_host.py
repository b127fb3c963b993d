"""The kernel side's view of a running dyno (dynod/kernel/host.py): what was removed under it, its
processes by pid namespace, other firewalls' drop policies. No root needed."""

from __future__ import annotations

import os

from dynod.kernel.addressing import Pool
from dynod.kernel.facts import DynoNetwork, Removed, Running
from dynod.kernel.host import Kernel
from dynod.kernel.inside import dyno_pids_in
from netns import namespace


def facts(veth: str) -> DynoNetwork:
    pool = Pool("172.16.0.0/12")
    return DynoNetwork(
        "tstunit-no-such-namespace", veth, "dynod0", 0, pool.subnet(1), pool.bridge_mac, None
    )


def test_removed_objects_names_what_is_missing() -> None:
    gone = Kernel.removed_objects(facts("lo"))
    assert gone == Removed(netns="tstunit-no-such-namespace") and gone.namespace_gone
    assert gone.described() == ["network namespace tstunit-no-such-namespace"]
    both = Kernel.removed_objects(facts("tstunit-nolink"))
    assert both == Removed("tstunit-no-such-namespace", "tstunit-nolink")
    assert both.described() == [
        "network namespace tstunit-no-such-namespace",
        "veth tstunit-nolink",
    ]


def test_a_removed_veth_alone_leaves_the_namespace_flag_down() -> None:
    """Reconcile decides on the flag, not on how the words read (a veth could be named
    anything, "network namespace x" included)."""
    removed = Removed(veth="network namespace x")
    assert removed and not removed.namespace_gone
    assert removed.described() == ["veth network namespace x"]
    assert not Removed()


def test_a_dead_or_reused_pid_finds_no_processes() -> None:
    # The recorded start time does not match: a reused PID is never taken for the dyno's.
    dyno = Running("tstunit-no-such-namespace", os.getpid(), 1.0)
    assert dyno_pids_in(dyno, namespace.scan()) == []


def test_a_default_drop_firewall_elsewhere_is_reported() -> None:
    from dynod.kernel.host import foreign_drop_policies

    class FakeNft:
        def ruleset(self) -> list[dict[str, object]]:
            return [
                {"table": {"family": "inet", "name": "filter"}},
                {
                    "chain": {
                        "family": "inet",
                        "table": "filter",
                        "name": "forward",
                        "hook": "forward",
                        "policy": "drop",
                    }
                },
                {
                    "chain": {
                        "family": "inet",
                        "table": "filter",
                        "name": "output",
                        "hook": "output",
                        "policy": "drop",
                    }
                },
                {
                    "chain": {
                        "family": "inet",
                        "table": "dynod",
                        "name": "input",
                        "hook": "input",
                        "policy": "drop",
                    }
                },
                {
                    "chain": {
                        "family": "ip",
                        "table": "nat",
                        "name": "input",
                        "hook": "input",
                        "policy": "accept",
                    }
                },
            ]

    warnings = foreign_drop_policies(FakeNft(), "dynod")  # type: ignore[arg-type]
    assert len(warnings) == 1
    assert "table inet filter chain forward drops forward traffic" in warnings[0]
