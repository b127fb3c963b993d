"""Kernel settings under /proc/sys (`sysctl -w`).

Settings under net/ belong to the network namespace of the thread that opens the file, so a
thread inside `namespace.entered()` changes the namespace's value, not the host's.
"""

from __future__ import annotations

from netns import record


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str) -> str:
    with open(_path(key)) as f:
        return f.read().strip()


def write(key: str, value: str | int) -> None:
    """`sysctl -w KEY=VALUE`."""
    with open(_path(key), "w") as f:
        f.write(str(value))
    record.note("sysctl", "-w", f"{key}={value}")
