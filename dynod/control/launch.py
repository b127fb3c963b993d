"""What a `run` request turns into: who the dyno runs as, its environment, its PORT."""

from __future__ import annotations

import os
import pwd
import random
from collections.abc import Mapping
from typing import Any

from dynod.api.requests import RunRequest
from dynod.errors import DynodError
from dynod.kernel import directory, processes
from dynod.state.store import Dyno

PORT_RANGE = (3000, 60999)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def choose_port() -> int:
    """Like Heroku, a different PORT for every dyno and restart: apps must read $PORT."""
    return random.randint(*PORT_RANGE)


def dyno_user(request: RunRequest, peer_uid: int, peer_gid: int, fallback: str) -> tuple[int, int]:
    """Dynos run as whoever asked, never as root: a root caller's dynos run as the user sudo was
    called by, or as the configured unprivileged user.  `sudo_uid`/`sudo_gid`, when sent, must
    be real IDs (integers from 0, not booleans, not the kernel's "no change" -1); a sudo_uid of
    0 (sudo called by root) means the configured user, never root."""
    sudo_uid, sudo_gid = request.sudo_uid, request.sudo_gid
    if peer_uid != 0:
        return peer_uid, _not_root_group(peer_gid)
    if sudo_uid is not None and sudo_gid is not None and sudo_uid != 0:
        return sudo_uid, _not_root_group(sudo_gid)
    try:
        entry = pwd.getpwnam(fallback)
    except KeyError:
        raise DynodError(
            f"user {fallback!r} does not exist",
            "create it, or start the daemon with --dyno-user NAME",
            status=500,
        ) from None
    if entry.pw_uid == 0:
        raise DynodError("dynos never run as root", "give --dyno-user an unprivileged user")
    return entry.pw_uid, entry.pw_gid


def _not_root_group(gid: int) -> int:
    """Nor in root's group: files readable by group root are not a dyno's business."""
    if gid == 0:
        raise DynodError(
            "dynos never run in the root group, and the caller's primary group is root",
            "call dynod from a user whose primary group is not root (or as root, without "
            "sudo: the dyno then runs as --dyno-user)",
        )
    return gid


def defaults(uid: int) -> dict[str, str]:
    """What every dyno starts from: PATH, LANG, and the HOME, USER, LOGNAME of its user."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    try:
        entry = pwd.getpwuid(uid)
        env |= {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
    except KeyError:
        env["HOME"] = "/"
    return env


def dyno_env(given: Mapping[str, Any]) -> dict[str, str]:
    """The variables `run` was given (-e; or the caller's PATH, LANG, LC_ALL, TZ), checked: what
    the dyno's row keeps. The defaults and the config vars are added at each start."""
    env: dict[str, str] = {}
    for key, value in given.items():
        processes.check_env_name(str(key))
        if "\0" in str(value):
            raise DynodError(f"the value of {key} holds a NUL byte", "remove it")
        env[str(key)] = str(value)
    return env


def layered(
    uid: int,
    inherited: Mapping[str, str],
    config: Mapping[str, str],
    own: Mapping[str, str],
) -> dict[str, str]:
    """The environment below the platform's variables, each layer over the one before: the
    defaults, the caller's PATH, LANG, LC_ALL, TZ (`inherited`), the app's config vars, the
    dyno's own (`run -e`: for that one dyno)."""
    return defaults(uid) | dict(inherited) | dict(config) | dict(own)


def process_env(dyno: Dyno, config: Mapping[str, str], dns: Mapping[str, str]) -> dict[str, str]:
    """What the process sees: `layered` (defaults < the caller's inherited variables < config
    vars < `run -e`), then the platform's DYNO, PORT on web dynos, HEROKU_PRIVATE_IP in a Private
    Space, and the HEROKU_DNS_* names (`dns`) when the app has DNS discovery on, which nothing
    overrides."""
    env = layered(dyno.uid, dyno.inherited, config, dyno.env)
    env["DYNO"] = dyno.name
    if dyno.port:
        env["PORT"] = str(dyno.port)
    if dyno.space:
        env["HEROKU_PRIVATE_IP"] = dyno.ip
    env.update(dns)
    return env


def check_can_enter(path: str, uid: int, gid: int) -> None:
    """Refuse up front a directory the dyno's user could not reach."""
    os.close(directory.open_as(path, uid, gid))
