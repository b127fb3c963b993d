"""What `POST /v1/apps/APP/dynos` refuses before the daemon is asked, and the API's answers to
bodies it cannot take (found by an adversarial try of issue 7's fixes)."""

from __future__ import annotations

import http.client
import json

import pytest

from dynod.api.requests import RunRequest
from tests.unit.fake_daemon import FakeApi

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
def test_a_run_body_of_the_wrong_shape_is_a_400(run_api: FakeApi, body: str, field: str) -> None:
    status, answer = run_api.request("POST", RUN, body.encode())
    assert status == 400 and field in answer["error"] and answer["fix"], answer
    assert run_api.daemon.calls == []  # refused before the daemon is asked


def test_a_well_formed_run_body_reaches_the_daemon(run_api: FakeApi) -> None:
    body = {"type": "web", "command": "true", "cwd": "/", "env": {"A": "1"}, "detach": True}
    run_api.request("POST", RUN, json.dumps(body).encode())
    assert run_api.daemon.calls[-1][1] == RunRequest("sushi", "web", "true", "/", {"A": "1"})


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_refused(run_api: FakeApi, word: str) -> None:
    status, answer = run_api.request("POST", RUN, f'{{"type": "web", "sudo_uid": {word}}}'.encode())
    assert status == 400 and "not JSON" in answer["error"]


def test_a_body_over_a_mib_is_answered_413_and_the_connection_is_heard(run_api: FakeApi) -> None:
    big = json.dumps({"type": "web", "command": "x" * (2 << 20)}).encode()
    try:
        status, answer = run_api.request("POST", RUN, big)
    except (ConnectionError, http.client.HTTPException) as exc:
        raise AssertionError(f"the API dropped the connection: {exc!r}") from None
    assert status == 413 and "over 1 MiB" in answer["error"] and answer["fix"]
    assert run_api.daemon.calls == []


@pytest.mark.parametrize("grace", ["1e300", "inf", "nan", "-1", "86401"])
def test_a_grace_period_must_be_a_usable_number_of_seconds(run_api: FakeApi, grace: str) -> None:
    status, answer = run_api.request("DELETE", f"{RUN}/web.1?grace={grace}")
    assert status == 400 and "seconds" in answer["error"], answer
