"""A dyno's working directory, checked as the dyno's user: the daemon opens it one component
at a time without following symlinks, so what root later binds into the dyno is exactly what
was checked (`sudo -u USER sh -c 'cd -P DIR'`, without the races)."""

from __future__ import annotations

import os
import pwd
import stat

from dynod.errors import DynodError


def open_as(path: str, uid: int, gid: int) -> int:
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
