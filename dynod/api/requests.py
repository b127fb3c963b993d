"""Typed requests: each API body parsed once, at the API's edge, into a frozen value that the
daemon's services take. Nothing behind the API reads a raw JSON dict."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynod.errors import DynodError
from dynod.rules import sizes

MAX_ID = 0xFFFFFFFE  # uid_t and gid_t are 32 bits; 0xFFFFFFFF is (uid_t)-1, "no change"


@dataclass(frozen=True)
class RunRequest:
    """POST /v1/apps/APP/dynos: what `dynod run` sends. Names, the command and the environment
    are checked by the service (they need the caller's user); this is their shape."""

    app: str
    type: str = ""
    command: str = ""
    cwd: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    size: str | None = None
    detach: bool = True  # missing means detached, as `heroku ps:scale` dynos
    sudo_uid: int | None = None  # who called sudo, when root runs `sudo dynod run`
    sudo_gid: int | None = None

    @classmethod
    def parse(cls, app: str, body: Mapping[str, Any]) -> RunRequest:
        env = body.get("env") or {}
        if not isinstance(env, Mapping):
            raise DynodError(
                "the field 'env' must be an object of names and values",
                'send it as {"env": {"NAME": "value"}}',
            )
        size = body.get("size")
        if size is not None and not isinstance(size, str):
            sizes.parse(size)  # says what a size looks like
        return cls(
            app=app,
            type=str(body.get("type", "")),
            command=str(body.get("command") or ""),
            cwd=str(body.get("cwd") or "/"),
            env={str(k): str(v) for k, v in env.items()},
            size=size,
            detach=bool(body.get("detach", True)),
            sudo_uid=_sudo_id(body, "sudo_uid"),
            sudo_gid=_sudo_id(body, "sudo_gid"),
        )


def _sudo_id(body: Mapping[str, Any], key: str) -> int | None:
    """The body's `key` (sudo_uid, sudo_gid) as an ID, None when missing; else DynodError."""
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python (True == 1): JSON true is no user ID
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise DynodError(
            f"the field {key!r} must be a user or group ID (an integer from 0 to {MAX_ID}), "
            f"and it is {json.dumps(value)}",
            f"send the number sudo puts in ${key.upper()}, or leave the field out",
        )
    return value
