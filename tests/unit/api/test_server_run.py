"""What `POST /v1/apps/APP/dynos` refuses before the daemon is asked, and the API's answers to
bodies it cannot take (found by an adversarial try of issue 7's fixes)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynod.api.requests import RunRequest
from dynod.api.server import ApiServer
from dynod.errors import DynodError
from tests.unit.fake_daemon import services


class RunDaemon:
    """Records what reaches the daemon, and refuses it."""

    state = None
    log = None

    def __init__(self) -> None:
        self.calls: list[RunRequest] = []

    async def run_dyno(self, request: RunRequest, uid: int, gid: int) -> Any:
        self.calls.append(request)
        raise DynodError("fake daemon: not running dynos", "")

    def app_dynos(self, app: str) -> list[Any]:
        return []

    def find(self, app: str, name: str) -> Any:
        raise DynodError(f"no dyno {name}", "")


class Api:
    def __init__(self, path: str, daemon: RunDaemon) -> None:
        self.path, self.daemon = path, daemon

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("localhost")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        conn.sock = sock
        conn.request(method, path, body=body)
        response = conn.getresponse()
        answer = response.status, json.loads(response.read())
        conn.close()
        return answer


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    daemon = RunDaemon()
    server = ApiServer(services(daemon))
    path = str(tmp_path / "api.sock")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start(path, None))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Api(path, daemon)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


RUN = "/v1/apps/sushi/dynos"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"type": "web", "command": "true", "env": ["A=1"]}', "'env'"),
        ('{"type": "web", "command": "true", "env": {"X": 5}}', "'env'"),
        ('{"type": 5, "command": "true"}', "'type'"),
        ('{"type": "web", "command": ["true"]}', "'command'"),
        ('{"type": "web", "command": "true", "cwd": 1}', "'cwd'"),
        ('{"type": "web", "command": "true", "size": 512}', "'size'"),
        ('{"type": "web", "command": "true", "colour": "red"}', "'colour'"),
        ("[1, 2]", "array"),
    ],
)
def test_a_run_body_of_the_wrong_shape_is_a_400(api: Api, body: str, field: str) -> None:
    status, answer = api.request("POST", RUN, body.encode())
    assert status == 400 and field in answer["error"] and answer["fix"], answer
    assert api.daemon.calls == []  # refused before the daemon is asked


def test_a_well_formed_run_body_reaches_the_daemon(api: Api) -> None:
    body = {"type": "web", "command": "true", "cwd": "/", "env": {"A": "1"}, "detach": True}
    api.request("POST", RUN, json.dumps(body).encode())
    assert api.daemon.calls[-1] == RunRequest("sushi", "web", "true", "/", {"A": "1"})


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_refused(api: Api, word: str) -> None:
    status, answer = api.request("POST", RUN, f'{{"type": "web", "sudo_uid": {word}}}'.encode())
    assert status == 400 and "not JSON" in answer["error"]


def test_a_body_over_a_mib_is_answered_413_and_the_connection_is_heard(api: Api) -> None:
    big = json.dumps({"type": "web", "command": "x" * (2 << 20)}).encode()
    try:
        status, answer = api.request("POST", RUN, big)
    except (ConnectionError, http.client.HTTPException) as exc:
        raise AssertionError(f"the API dropped the connection: {exc!r}") from None
    assert status == 413 and "over 1 MiB" in answer["error"] and answer["fix"]
    assert api.daemon.calls == []


@pytest.mark.parametrize("grace", ["1e300", "inf", "nan", "-1", "86401"])
def test_a_grace_period_must_be_a_usable_number_of_seconds(api: Api, grace: str) -> None:
    status, answer = api.request("DELETE", f"{RUN}/web.1?grace={grace}")
    assert status == 400 and "seconds" in answer["error"], answer
