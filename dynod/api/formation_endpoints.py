"""The formation's endpoints (issue 9), beside api/endpoints.py's:

    GET    /v1/formation                          every app's process types: {"APP": [...]}
    GET    /v1/apps/APP/formation                 the process types: command, quantity, size
    PATCH  /v1/apps/APP/formation                 ps:scale: {"updates": [...], "commands": ...}
    GET    /v1/apps/APP/formation/wait?timeout=S  ps:wait: until every dyno is up, or why not
    POST   /v1/apps/APP/actions/restart           ps:restart: {"target": "web" | "web.1" | null}
    POST   /v1/apps/APP/actions/stop              ps:stop: {"target": "web" | "web.1"}

PATCH takes Heroku's shape ({"updates": [{"type": "web", "quantity": 2, "size": "..."}]}) plus
"delta" for `web+1`, and the Procfile as the CLI read it ("commands", from "cwd")."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from dynod.api.requests import _sudo_id, object_with, optional_text, string_map, text
from dynod.api.wire import Answer, Request
from dynod.control import readiness
from dynod.control.formation import FormationService, ScaleRequest
from dynod.errors import DynodError
from dynod.rules import formation, sizes
from dynod.rules.caller import INHERITED_ENV

Handler = Callable[..., Awaitable[Answer]]
MAX_WAIT = 86_400.0
MAX_COUNT = 999_999_999  # what `ps:scale` reads (9 digits)
DEFAULT_WAIT = 60.0  # as the boot timeout: a web dyno that is not up by then gets R10


def scale_request(app: str, body: Any) -> ScaleRequest:
    fields = object_with(body, "updates", "commands", "cwd", "env", "sudo_uid", "sudo_gid")
    updates = fields.get("updates")
    if not isinstance(updates, list) or not updates:
        raise DynodError(
            "the field 'updates' must be a non-empty list",
            'send {"updates": [{"type": "web", "quantity": 2}]}',
        )
    changes = formation.distinct([_change(u) for u in updates])
    string_map(fields, "commands")
    string_map(fields, "env")
    # What a scale passes on is the caller's environment, below the config vars: the names
    # `dynod run` may pass on too, nothing else (a variable of the app's is a config var).
    unknown = sorted(set(fields.get("env") or {}) - set(INHERITED_ENV))
    if unknown:
        raise DynodError(
            f"the field 'env' holds {', '.join(map(repr, unknown))}: a scale passes on only "
            f"{', '.join(INHERITED_ENV)} from the caller",
            "set the app's variables with `dynod config:set NAME=VALUE --app APP`",
        )
    cwd = text(fields, "cwd")
    if not cwd.startswith("/"):
        raise DynodError(f"'cwd' must be an absolute path, and it is {cwd!r}", "send one")
    return ScaleRequest(
        app,
        changes,
        dict(fields.get("commands") or {}),
        cwd,
        dict(fields.get("env") or {}),
        _sudo_id(fields, "sudo_uid"),
        _sudo_id(fields, "sudo_gid"),
    )


def _change(update: Any) -> formation.Change:
    fields = object_with(update, "type", "quantity", "delta", "size")
    ptype = formation.check_type(text(fields, "type"))
    size = optional_text(fields, "size")
    quantity, delta = fields.get("quantity"), fields.get("delta")
    if (quantity is None) == (delta is None):
        raise DynodError(
            f"the update of {ptype} needs one of 'quantity' and 'delta'",
            '{"type": "web", "quantity": 2} sets it; {"type": "web", "delta": -1} moves it',
        )
    number = quantity if quantity is not None else delta
    # the per-app cap is checked on the result (rules/formation.apply); this only keeps
    # numbers that are not counts (true, 1.5, 10**30) out
    if (
        isinstance(number, bool)
        or not isinstance(number, int)
        or abs(number) > MAX_COUNT
        or (quantity is not None and number < 0)
    ):
        raise DynodError(
            f"the update of {ptype}: {json.dumps(number)} is not a number of dynos",
            f"give an integer (the app holds at most {formation.MAX_DYNOS_PER_APP} dynos)",
        )
    if size is not None:
        if quantity is None:
            raise DynodError(f"the update of {ptype}: a size goes with a quantity", "add one")
        size = sizes.parse(size).name
    if quantity is not None:
        return formation.Change(ptype, quantity=quantity, size=size)
    return formation.Change(ptype, delta=number)


def _target(body: Any, required: bool) -> str | None:
    fields = object_with(body or {}, "target")
    return text(fields, "target") if required else optional_text(fields, "target")


def _timeout(r: Request) -> float:
    value = r.query.get("timeout")
    if not value:
        return DEFAULT_WAIT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT:  # also nan
        raise DynodError(f"not a usable timeout: {value!r}", f"give seconds from 0 to {MAX_WAIT:g}")
    return seconds


def routes(service: FormationService) -> list[tuple[str, tuple[str, ...], Handler]]:
    async def get(r: Request, app: str) -> Answer:
        return 200, service.formation(app)

    async def get_all(r: Request) -> Answer:
        return 200, service.formations()

    async def scale(r: Request, app: str) -> Answer:
        return 200, await service.scale(scale_request(app, r.body), r.uid, r.gid)

    async def wait(r: Request, app: str) -> Answer:
        timeout = _timeout(r)
        service.dynos.known_app(app)
        return 200, await readiness.wait(service.state, service.log, app, timeout)

    async def restart(r: Request, app: str) -> Answer:
        return 200, {"restarted": await service.restart(app, _target(r.body, False))}

    async def stop(r: Request, app: str) -> Answer:
        target = _target(r.body, True)
        assert target is not None
        return 200, await service.stop(app, target)

    result: list[tuple[str, tuple[str, ...], Handler]] = [
        ("GET", ("formation",), get_all),
        ("GET", ("apps", "*", "formation"), get),
        ("PATCH", ("apps", "*", "formation"), scale),
        ("GET", ("apps", "*", "formation", "wait"), wait),
        ("POST", ("apps", "*", "actions", "restart"), restart),
        ("POST", ("apps", "*", "actions", "stop"), stop),
    ]
    return result
