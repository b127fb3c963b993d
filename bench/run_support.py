"""What every bench script needs around its measurements: unwinding on SIGTERM as on Ctrl-C,
a cleanup no second Ctrl-C cuts short, and a one-line description of the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from collections.abc import Iterator
from typing import Any


class Interrupted(Exception):
    """SIGTERM to the bench: unwind through the finally blocks like Ctrl-C does."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup is short and bounded: a second Ctrl-C must not cut it short."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"
