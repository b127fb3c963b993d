"""docs/tutorial.md runs as written: every `run` block, in order, on a throwaway machine (fresh
network, mount and pid namespaces), and each prints what its `expect` block says."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.integration.tutorial import Machine, mismatch, parse
from tests.support import netns_names

pytestmark = pytest.mark.root

TUTORIAL = Path(__file__).parents[2] / "docs" / "tutorial.md"


def test_the_tutorial_runs_as_written() -> None:
    tutorial = parse(TUTORIAL.read_text())
    assert len(tutorial.steps) >= 8, "the tutorial lost its marked blocks"
    before = netns_names()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    machine = Machine()
    try:
        for step in tutorial.steps:
            status, output = machine.run(step.script, env)
            assert status == 0, f"docs/tutorial.md:{step.line}: exit {status}\n{output}"
            if step.expected is not None:
                why = mismatch(step.expected, output)
                assert why is None, f"docs/tutorial.md:{step.line}: {why}\n--- printed:\n{output}"
    finally:
        machine.close()
    assert netns_names() == before, "the tutorial's namespaces reached the host"
