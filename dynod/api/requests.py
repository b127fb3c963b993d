"""Typed requests: each API body parsed once, at the API's edge, into a frozen value that the
daemon's services take. Nothing behind the API reads a raw JSON dict.

Every body is a JSON object with the endpoint's fields only: a field that is not the endpoint's,
a missing one and one of the wrong JSON type are each a 400 that names the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dynod.errors import DynodError
from dynod.rules import sizes
from dynod.rules.caller import INHERITED_ENV

MAX_ID = 0xFFFFFFFE  # uid_t and gid_t are 32 bits; 0xFFFFFFFF is (uid_t)-1, "no change"


@dataclass(frozen=True)
class RunRequest:
    """POST /v1/apps/APP/dynos: what `dynod run` sends. Names, the command and the environment
    are checked by the service (they need the caller's user); this is their shape."""

    app: str
    type: str = ""
    command: str = ""
    cwd: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)  # `run -e`: over the config vars
    # The caller's PATH, LANG, LC_ALL, TZ (rules/caller.py): under the config vars.
    inherited: Mapping[str, str] = field(default_factory=dict)
    size: str | None = None
    detach: bool = True  # missing means detached, as `heroku ps:scale` dynos
    sudo_uid: int | None = None  # who called sudo, when root runs `sudo dynod run`
    sudo_gid: int | None = None
    # A one-off dyno (run.N) attached to the caller over an HTTP Upgrade (api/attach.py); with
    # `tty`, on a pseudo-terminal of rows x cols (0: left to the kernel's default).
    attach: bool = False
    tty: bool = False
    rows: int = 0
    cols: int = 0

    @classmethod
    def from_body(cls, app: str, body: Any) -> RunRequest:
        """The API's body, checked field by field (the JSON types), then parsed."""
        fields = object_with(body, *RUN_FIELDS)
        if "detach" in fields:  # missing means detached; anything but a JSON boolean is refused
            flag(fields, "detach", required=True)
        for key in ("type", "command", "cwd", "size"):
            if fields.get(key) is not None:
                text(fields, key)
        string_map(fields, "env")
        string_map(fields, "inherited")
        attach, tty = flag(fields, "attach"), flag(fields, "tty")
        rows, cols = _window(fields, "rows"), _window(fields, "cols")
        if tty and not attach:
            raise DynodError(
                "a terminal ('tty') is only for an attached one-off dyno",
                'send {"attach": true, "tty": true}, or leave tty out',
            )
        if attach and str(fields.get("type") or "run") != "run":
            raise DynodError(
                "an attached one-off dyno is always of type run (run.1, run.2, ...)",
                "leave 'type' out, or start a process dyno without 'attach'",
            )
        parsed = cls.parse(app, fields)
        return replace(
            parsed,
            attach=attach,
            tty=tty,
            rows=rows,
            cols=cols,
            detach=not attach and parsed.detach,
        )

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
        inherited = body.get("inherited") or {}
        if not isinstance(inherited, Mapping):
            raise DynodError(
                "the field 'inherited' must be an object of names and values",
                'send it as {"inherited": {"PATH": "/usr/bin:/bin"}}',
            )
        unknown = sorted(set(inherited) - set(INHERITED_ENV))
        if unknown:
            raise DynodError(
                f"the field 'inherited' holds {', '.join(map(repr, unknown))}: only "
                f"{', '.join(INHERITED_ENV)} are passed on from the caller",
                "send any other variable in 'env'",
            )
        return cls(
            app=app,
            type=str(body.get("type", "")),
            command=str(body.get("command") or ""),
            cwd=str(body.get("cwd") or "/"),
            env={str(k): str(v) for k, v in env.items()},
            inherited={str(k): str(v) for k, v in inherited.items()},
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


# What `dynod run` sends; anything else is refused, as on every other endpoint.
RUN_FIELDS = (
    "type",
    "command",
    "cwd",
    "env",
    "inherited",
    "detach",
    "size",
    "sudo_uid",
    "sudo_gid",
    "attach",
    "tty",
    "rows",
    "cols",
)
MAX_WINDOW = 0xFFFF  # struct winsize's fields are 16 bits


def _window(body: Mapping[str, Any], key: str) -> int:
    """A terminal's rows or cols: 0 (the default) to MAX_WINDOW."""
    value = body.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WINDOW:
        raise DynodError(
            f"the field {key!r} must be an integer from 0 to {MAX_WINDOW}, "
            f"and it is {json.dumps(value)}",
            "send the terminal's size as `stty size` prints it, or leave it out",
        )
    return value


@dataclass(frozen=True)
class CreateSpace:
    """POST /v1/spaces: a range and a NAT address are chosen when not given."""

    name: str
    cidr: str | None = None
    nat_ip: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> CreateSpace:
        fields = object_with(body, "name", "cidr", "nat_ip")
        return cls(
            text(fields, "name"), optional_text(fields, "cidr"), optional_text(fields, "nat_ip")
        )


@dataclass(frozen=True)
class CreateApp:
    """POST /v1/apps: in the Common Runtime when space is None; `dir` is where its Procfile is
    (the CLI sends its working directory when --dir is not given)."""

    name: str
    space: str | None = None
    internal_routing: bool = False
    dir: str | None = None

    @classmethod
    def from_body(cls, body: Any) -> CreateApp:
        fields = object_with(body, "name", "space", "internal_routing", "dir")
        return cls(
            text(fields, "name"),
            optional_text(fields, "space"),
            flag(fields, "internal_routing"),
            optional_text(fields, "dir"),
        )


@dataclass(frozen=True)
class SetFeature:
    """PUT /v1/apps/APP/features/FEATURE."""

    app: str
    feature: str
    enabled: bool

    @classmethod
    def from_body(cls, app: str, feature: str, body: Any) -> SetFeature:
        fields = object_with(body, "enabled")
        return cls(app, feature, flag(fields, "enabled", required=True))


@dataclass(frozen=True)
class TrustedRange:
    """POST /v1/spaces/SPACE/trusted-ips (the body's cidr) and DELETE .../trusted-ips/CIDR."""

    space: str
    cidr: str

    @classmethod
    def from_body(cls, space: str, body: Any) -> TrustedRange:
        return cls(space, text(object_with(body, "cidr"), "cidr"))


@dataclass(frozen=True)
class StopDynos:
    """DELETE /v1/apps/APP/dynos[/NAME][?grace=S]: one dyno, or every dyno of the app."""

    app: str
    dyno: str | None = None
    grace: float | None = None


def object_with(body: Any, *known: str) -> dict[str, Any]:
    """The body: a JSON object with no fields but `known`."""
    listed = ", ".join(known)
    if not isinstance(body, dict):
        raise DynodError(
            f"the request body is JSON {json_type(body)}, not an object",
            f"send a JSON object with the fields {listed}",
        )
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise DynodError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
            f"this endpoint's fields are {listed}",
        )
    return body


def string_map(body: Mapping[str, Any], key: str) -> None:
    """A field that, when given, is a JSON object of strings (the dyno's environment)."""
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DynodError(
            f"the field {key!r} must be a JSON object of strings, and it is "
            f"{json.dumps(value)[:200]}",
            f'send it as {{"{key}": {{"NAME": "value"}}}}',
        )


def optional_text(body: Mapping[str, Any], key: str) -> str | None:
    """A string field that may be missing or null."""
    return None if body.get(key) is None else text(body, key)


def text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in body else f"JSON {json_type(value)}"
        raise DynodError(
            f"the field {key!r} must be a string, and it is {got}",
            f'send it as a string, e.g. {{"{key}": "..."}}',
        )
    return value


def flag(body: Mapping[str, Any], key: str, required: bool = False) -> bool:
    """A true/false field; when not required, missing or null is false."""
    value = body.get(key)
    if value is None and not required:
        return False
    if not isinstance(value, bool):
        got = "missing" if key not in body else f"JSON {json_type(value)} {json.dumps(value)}"
        raise DynodError(
            f"the field {key!r} must be true or false, and it is {got}",
            f'send {{"{key}": true}} or {{"{key}": false}}',
        )
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    named: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return named.get(type(value), type(value).__name__)
