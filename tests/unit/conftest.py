"""Fixtures shared by the unit tests: the real API server over a fake daemon."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dynod.api.server import ApiServer
from tests.unit.fake_daemon import FakeApi, FakeDaemon, RunDaemon, services


@contextmanager
def serving(daemon: FakeDaemon, tmp_path: Path) -> Iterator[FakeApi]:
    """The API server on a socket under tmp_path, its event loop on a thread of its own."""
    server = ApiServer(services(daemon))
    path = str(tmp_path / "api.sock")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start(path, None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeApi(path, daemon)
    fake.server = server  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApi]:
    with serving(FakeDaemon(), tmp_path) as fake:
        yield fake


@pytest.fixture
def run_api(tmp_path: Path) -> Iterator[FakeApi]:
    with serving(RunDaemon(), tmp_path) as fake:
        yield fake
