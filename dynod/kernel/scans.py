"""One /proc scan shared by everyone who asks at about the same time (event loop thread).

Finding a dyno's processes is a scan of every process of the host (namespace.scan): stopping
4,000 dynos at once would scan 4,000 times, each scan as long as the host has processes. Here a
question is answered by the next scan that starts after it was asked, and every question asked
before that scan starts shares it: a scan never predates the question, so nothing that existed
when it was asked is missed."""

from __future__ import annotations

import asyncio

from netns import namespace


class SharedScans:
    def __init__(self) -> None:
        self._queued: asyncio.Future[namespace.Table] | None = None
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def fresh(self) -> namespace.Table:
        """A scan that starts after this call."""
        if self._queued is None:
            loop = asyncio.get_running_loop()
            self._queued = loop.create_future()
            task = loop.create_task(self._run(self._queued))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(self._queued)

    async def _run(self, result: asyncio.Future[namespace.Table]) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one scan at a time; the next one gathers the askers meanwhile
            if self._queued is result:
                self._queued = None  # from now on, askers need a later scan
            try:
                table = await asyncio.to_thread(namespace.scan)
            except Exception as exc:  # noqa: BLE001 - handed to every asker
                result.set_exception(exc)
            else:
                result.set_result(table)
