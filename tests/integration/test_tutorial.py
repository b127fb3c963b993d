"""docs/tutorial.md runs as written: every `run` block, in order, on a throwaway machine (fresh
network, mount and pid namespaces), and each prints what its `expect` block says. The `daemon`
block starts a throwaway dynod daemon inside that machine (private state, socket, prefix and
range), stopped with Ctrl-C before the machine is closed, whatever happened."""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import sys
import tempfile
from pathlib import Path

import pytest

from netns import cgroup
from tests.integration.tutorial import Machine, Step, mismatch, parse
from tests.support import daemon_tree, netns_names, unique_prefix

pytestmark = pytest.mark.root

ROOT = Path(__file__).parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
# Inside the machine, whose /run is its own tmpfs: nothing reaches the host's /run/dynod.sock.
SOCKET = "/run/dynod.sock"


def _daemon_argv(step: Step, prefix: str) -> list[str]:
    """The block's `dynod daemon ...` with what makes it a throwaway: its own state, prefix and
    range, a closed DNS upstream (never the host's resolver) and a short grace."""
    return [
        *shlex.split(step.script),
        "--state-dir",
        "/run/dynod-state",
        "--prefix",
        prefix,
        "--cidr",
        "172.16.0.0/24",
        "--router-port",
        "5000",
        "--upstream",
        "127.0.0.1:9",
        "--grace",
        "3",
    ]


def _remove_leftover_cgroups(prefix: str) -> None:
    """A daemon that could not stop cleanly leaves its dynos' groups (their processes died with
    the machine): `rmdir` them."""
    tree = daemon_tree(prefix)
    if tree is None:
        return
    names = {
        os.path.basename(path)
        for _, base in tree.bases
        for path in glob.glob(os.path.join(base, f"{prefix}-*"))
    }
    for name in names:
        with contextlib.suppress(OSError):
            cgroup.remove(tree, name)


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    tutorial = parse(TUTORIAL.read_text())
    assert len(tutorial.steps) >= 8, "the tutorial lost its marked blocks"
    assert sum(step.daemon for step in tutorial.steps) == 1, "the tutorial starts one daemon"
    before = netns_names()
    # `dynod` is this checkout's, whatever is installed on the machine
    bin_dir = Path(tempfile.mkdtemp(prefix="tutorial-bin-", dir=tmp_path))
    (bin_dir / "dynod").write_text(f'#!/bin/sh\nexec {sys.executable} -m dynod "$@"\n')
    (bin_dir / "dynod").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        DYNOD_SOCKET=SOCKET,
    )
    prefix = unique_prefix()
    log = tmp_path / "daemon.log"
    machine = Machine()
    try:
        for step in tutorial.steps:
            if step.daemon:
                machine.start_daemon(_daemon_argv(step, prefix), env, log)
                continue
            status, output = machine.run(step.script, env)
            assert status == 0, f"docs/tutorial.md:{step.line}: exit {status}\n{output}"
            if step.expected is not None:
                why = mismatch(step.expected, output)
                assert why is None, f"docs/tutorial.md:{step.line}: {why}\n--- printed:\n{output}"
        assert machine.stop_daemon() == 0, f"the daemon did not stop cleanly:\n{log.read_text()}"
    finally:
        machine.close()
        _remove_leftover_cgroups(prefix)
    # (other processes may add or remove namespaces meanwhile: only the tutorial's are checked)
    new = netns_names() - before
    tutorials = {"dyno1", "dyno2", "outside"}
    assert not {n for n in new if n in tutorials or n.startswith(prefix)}, (
        "the tutorial's namespaces reached the host"
    )
