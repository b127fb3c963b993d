"""Fixtures shared by the unit tests: the real API server over a fake daemon."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynod.api.server import ApiServer
from tests.unit.fake_daemon import FakeApi, FakeDaemon, RunDaemon, services


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApi]:
    daemon = FakeDaemon()
    server = ApiServer(services(daemon))
    path = str(tmp_path / "api.sock")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start(path, None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield FakeApi(path, daemon)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def run_api(tmp_path: Path) -> Iterator[FakeApi]:
    daemon = RunDaemon()
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
