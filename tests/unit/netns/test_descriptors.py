"""Descriptors kept above select(2)'s range (netns/descriptors.py)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from netns import descriptors


def test_a_descriptor_is_moved_above_the_select_range(tmp_path: Path) -> None:
    path = tmp_path / "kept"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)  # inheritable, as a caller may hand it over
    lifted = descriptors.lifted(fd)
    try:
        assert lifted >= descriptors.FD_SETSIZE
        assert os.fstat(lifted).st_ino == path.stat().st_ino  # the same open file
        assert fcntl.fcntl(lifted, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        try:
            os.fstat(fd)
            raise AssertionError("the old number is still open")
        except OSError:
            pass
        assert descriptors.low_one_free()
    finally:
        os.close(lifted)


_LOW_LIMIT = """
import os, resource, sys
sys.path.insert(0, {root!r})
from netns import descriptors
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fd = os.open("/dev/null", os.O_RDONLY)
print(descriptors.lifted(fd) == fd)
"""


def test_a_limit_below_the_range_keeps_the_descriptor_where_it_is() -> None:
    script = _LOW_LIMIT.format(root=str(Path(__file__).parents[3]))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "True"
