"""What the control side's unit tests share: a DNS server that serves nothing, running a test
against a supervisor, waiting for a condition, and ending the fake kernel's processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable

from dynod.control.supervisor import Supervisor
from dynod.kernel.fake import FakeKernel


class NoDns:
    def set_scope(self, scope: str, network: str, records: dict[str, list[str]]) -> None:
        pass

    def update_scope(self, scope: str, changes: dict[str, list[str] | None]) -> None:
        pass

    def remove_scope(self, scope: str) -> None:
        pass


def run_with(supervisor: Supervisor, test: Callable[[], Awaitable[None]]) -> None:
    """Run the test on an event loop of its own; the supervisor's tasks end with it."""

    async def main() -> None:
        try:
            await test()
        finally:
            await supervisor.close()

    asyncio.run(main())


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def end_sessions(kernel: FakeKernel) -> None:
    """Whatever the fake's dynos left running (a test failed half-way) goes."""
    for session in kernel.sessions.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session, 9)
