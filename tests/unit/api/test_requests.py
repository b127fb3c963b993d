"""Bodies are parsed once, at the API's edge, into typed requests."""

from __future__ import annotations

import pytest

from dynod.api.requests import RunRequest
from dynod.errors import DynodError


def test_a_run_body_becomes_a_run_request() -> None:
    body = {
        "type": "web",
        "command": "python -m http.server $PORT",
        "cwd": "/srv",
        "env": {"A": 1, "B": "two"},
        "size": "standard-2x",
        "detach": False,
        "sudo_uid": 1000,
        "sudo_gid": 1001,
    }
    assert RunRequest.parse("sushi", body) == RunRequest(
        app="sushi",
        type="web",
        command="python -m http.server $PORT",
        cwd="/srv",
        env={"A": "1", "B": "two"},
        size="standard-2x",
        detach=False,
        sudo_uid=1000,
        sudo_gid=1001,
    )


def test_missing_fields_take_the_defaults() -> None:
    request = RunRequest.parse("sushi", {})
    assert (request.cwd, request.env, request.size, request.detach) == ("/", {}, None, True)
    assert (request.sudo_uid, request.sudo_gid) == (None, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"env": ["A=1"]}, "'env'"),
        ({"env": "A=1"}, "'env'"),
        ({"sudo_uid": True, "sudo_gid": 1}, "'sudo_uid'"),
        ({"sudo_uid": 1, "sudo_gid": -1}, "'sudo_gid'"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(DynodError) as err:
        RunRequest.parse("sushi", body)
    assert field in err.value.problem and err.value.fix and err.value.status == 400


def test_a_size_that_is_no_name_is_refused() -> None:
    with pytest.raises(DynodError) as err:
        RunRequest.parse("sushi", {"size": 2})
    assert "dyno type name" in err.value.problem


def test_an_attach_body_is_a_one_off_never_detached() -> None:
    body = {"command": "bash", "attach": True, "tty": True, "rows": 40, "cols": 120}
    request = RunRequest.from_body("sushi", body)
    assert (request.attach, request.tty, request.rows, request.cols) == (True, True, 40, 120)
    assert request.detach is False


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"command": "bash", "tty": True}, "only for an attached"),
        ({"command": "bash", "attach": True, "type": "web"}, "always of type run"),
        ({"command": "bash", "attach": True, "rows": -1}, "'rows'"),
        ({"command": "bash", "attach": True, "cols": 70000}, "'cols'"),
        ({"command": "bash", "attach": True, "rows": True}, "'rows'"),
        ({"command": "bash", "attach": "yes"}, "'attach'"),
    ],
)
def test_a_bad_attach_body_is_refused(body: dict[str, object], words: str) -> None:
    with pytest.raises(DynodError) as refused:
        RunRequest.from_body("sushi", body)
    assert words in refused.value.problem and refused.value.fix
