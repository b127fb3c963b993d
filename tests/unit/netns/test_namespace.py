"""Finding processes by namespace (netns/namespace.py). No root needed."""

from __future__ import annotations

import os

from netns import namespace


def test_no_pid_namespace_of_its_own_is_never_the_whole_host() -> None:
    # This process made no pid namespace: its children's is its own, which holds every process
    # of the host. Killing "the dyno" must never mean that.
    assert namespace.pids_in_child_pid_namespace(os.getpid()) == []
    assert namespace.pids_in_child_pid_namespace(2**22 + 1) == []  # no such process
    own = namespace.inode_of(os.getpid(), "pid")
    assert own is not None and os.getpid() in namespace.pids_in("pid", own)
