"""A command is parsed before anything is set up for it: a huge one is refused at once, not
parsed for seconds on the daemon's event loop."""

from __future__ import annotations

import time

import pytest

from dynod.errors import DynodError
from dynod.kernel import processes


def test_a_command_over_the_limit_is_refused_quickly() -> None:
    began = time.monotonic()
    with pytest.raises(DynodError, match="at most 32768"):
        processes.check_command("true " + "a" * 1_000_000, "/", "/usr/bin:/bin")
    assert time.monotonic() - began < 0.5
    processes.check_command("true " + "a" * 30_000, "/", "/usr/bin:/bin")  # within it: fine
