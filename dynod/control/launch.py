"""What a `run` request turns into: who the dyno runs as, its environment, its PORT."""

from __future__ import annotations

import os
import pwd
import random
import stat
from collections.abc import Mapping
from typing import Any

from dynod.api.requests import RunRequest
from dynod.errors import DynodError
from dynod.kernel import processes
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


def dyno_env(given: Mapping[str, Any], uid: int) -> dict[str, str]:
    """The caller's variables over a small default: PATH, LANG, HOME, USER, LOGNAME."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    try:
        entry = pwd.getpwuid(uid)
        env |= {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
    except KeyError:
        env["HOME"] = "/"
    for key, value in given.items():
        processes.check_env_name(str(key))
        if "\0" in str(value):
            raise DynodError(f"the value of {key} holds a NUL byte", "remove it")
        env[str(key)] = str(value)
    return env


def process_env(dyno: Dyno, dns: Mapping[str, str]) -> dict[str, str]:
    """What the process sees: the dyno's environment plus DYNO, PORT on web dynos,
    HEROKU_PRIVATE_IP in a Private Space, and the HEROKU_DNS_* names (`dns`) when the app has
    DNS discovery on."""
    env = dict(dyno.env)
    env["DYNO"] = dyno.name
    if dyno.port:
        env["PORT"] = str(dyno.port)
    if dyno.space:
        env["HEROKU_PRIVATE_IP"] = dyno.ip
    env.update(dns)
    return env


def open_dir_as(path: str, uid: int, gid: int) -> int:
    """An O_PATH descriptor on directory `path`, opened one component at a time without following
    symlinks, each checked for search permission as uid:gid with no supplementary groups (how
    the dyno runs). What root later binds into the dyno is exactly what was checked."""
    if not os.path.isabs(path):
        raise DynodError(f"{path} is not an absolute path", "give the full path")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    current = "/"
    try:
        for part in [p for p in path.split("/") if p]:
            current = os.path.join(current, part)
            try:
                child = os.open(
                    part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except FileNotFoundError:
                raise DynodError(
                    f"directory {current} does not exist", "run dynod from an existing directory"
                ) from None
            except NotADirectoryError:
                raise DynodError(
                    f"{current} is not a directory (or is a symlink)",
                    "run dynod from the real directory (`cd -P`)",
                ) from None
            os.close(fd)
            fd = child
            _check_search(os.fstat(fd), current, uid, gid)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_can_enter(path: str, uid: int, gid: int) -> None:
    """Refuse up front a directory the dyno's user could not reach."""
    os.close(open_dir_as(path, uid, gid))


def _check_search(info: os.stat_result, path: str, uid: int, gid: int) -> None:
    if info.st_uid == uid:
        allowed = info.st_mode & stat.S_IXUSR
    elif info.st_gid == gid:
        allowed = info.st_mode & stat.S_IXGRP
    else:
        allowed = info.st_mode & stat.S_IXOTH
    if uid != 0 and not allowed:
        raise DynodError(
            f"the dyno's user {_user_name(uid)} (uid {uid}) cannot enter {path}",
            "run from a directory that user can reach, or with sudo so the dyno runs as you",
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
