"""api/formation_endpoints.py: ps:scale's body (Heroku's `updates`, plus `delta`, the Procfile's
commands and where they were read) parsed field by field; bad bodies are 400s that name the
field."""

from __future__ import annotations

from typing import Any

import pytest

from dynod.api.formation_endpoints import scale_request
from dynod.errors import DynodError
from dynod.rules.formation import Change


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "updates": [{"type": "web", "quantity": 2, "size": "Standard-2X"}],
        "commands": {"web": "python3 server.py"},
        "cwd": "/srv/app",
    }
    return base | changes


def test_a_scale_body() -> None:
    request = scale_request(
        "sushi",
        body(
            updates=[{"type": "web", "quantity": 2, "size": "2X"}, {"type": "worker", "delta": -1}],
            env={"LANG": "C.UTF-8"},
            sudo_uid=1000,
            sudo_gid=1000,
        ),
    )
    assert request.changes == [Change("web", 2, size="standard-2x"), Change("worker", delta=-1)]
    assert request.commands == {"web": "python3 server.py"} and request.cwd == "/srv/app"
    assert request.env == {"LANG": "C.UTF-8"} and (request.sudo_uid, request.sudo_gid) == (
        1000,
        1000,
    )


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (body(updates=[]), "'updates' must be a non-empty list"),
        (body(updates="web=2"), "'updates' must be a non-empty list"),
        (body(updates=[{"type": "web"}]), "needs one of 'quantity' and 'delta'"),
        (body(updates=[{"type": "web", "quantity": 1, "delta": 1}]), "needs one of"),
        (body(updates=[{"type": "web", "quantity": True}]), "not a number of dynos"),
        (body(updates=[{"type": "web", "quantity": 1.5}]), "not a number of dynos"),
        (body(updates=[{"type": "web", "quantity": 10**10}]), "not a number of dynos"),
        (body(updates=[{"type": "web", "quantity": -1}]), "not a number of dynos"),
        (body(updates=[{"type": "web", "delta": 1, "size": "eco"}]), "a size goes with"),
        (body(updates=[{"type": "run", "quantity": 1}]), "one-off dynos"),
        (body(updates=[{"type": "web", "quantity": 1, "x": 1}]), "unknown field 'x'"),
        (body(updates=[{"type": "web", "quantity": 1}, {"type": "web", "delta": 1}]), "twice"),
        (body(commands={"web": 1}), "'commands' must be a JSON object of strings"),
        (body(cwd="relative"), "'cwd' must be an absolute path"),
        (body(sudo_uid=True), "'sudo_uid' must be a user or group ID"),
        (body(env={"PATH": "/bin", "SECRET": "x"}), "'env' holds 'SECRET': a scale passes on"),
        (body(other=1), "unknown field 'other'"),
    ],
)
def test_bad_bodies_name_the_field(bad: dict[str, Any], says: str) -> None:
    with pytest.raises(DynodError, match=says):
        scale_request("sushi", bad)
