"""The registry's part of a dyno's start and stop (dns/registry.py) runs the same Python code
for a formation of 200 dynos as for one of 2,000: no scan of the formation's members, no list
rebuilt from them (counted as the Python lines run)."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from dynod.dns.registry import Registry
from dynod.dns.server import DnsServer
from tests.unit.dns.test_late_names import OneApp, web


def calls_of_ten_stops_and_starts(size: int) -> int:
    server = DnsServer([("127.0.0.1", 9)])
    try:
        registry = Registry(OneApp(), server, lambda space: ("10.1.0.0/16", "10.1.0.1"))  # type: ignore[arg-type]
        for number in range(1, size + 1):
            registry.register(web(number))
        counted = 0

        def trace(_frame: FrameType, _event: str, _arg: Any) -> Any:
            nonlocal counted
            counted += 1  # a call, a line, a loop's turn (a backward jump), a return
            return trace

        sys.settrace(trace)
        try:
            for number in range(size // 2, size // 2 + 10):  # from the middle of the formation
                registry.unregister(web(number))
                registry.register(web(number))
        finally:
            sys.settrace(None)
        return counted
    finally:
        server.close()


def test_a_stop_and_a_start_run_the_same_code_for_200_or_2000_dynos() -> None:
    """Before: leaving the formation scanned its members with a generator (hundreds of steps
    at 200, thousands at 2,000)."""
    assert calls_of_ten_stops_and_starts(200) == calls_of_ten_stops_and_starts(2000)
