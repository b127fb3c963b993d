"""What the CLI passes on of its caller: the environment variables a dyno inherits, and who
called sudo. One place, for `dynod run`, `ps:scale`, `up` and the pytest plugin alike."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["INHERITED_ENV", "inherited_env", "sudo_ids"]

# Variables of the caller's environment a dyno inherits (under the app's config vars);
# everything else comes from --env or the config vars.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def inherited_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The caller's values of INHERITED_ENV that are set."""
    return {k: environ[k] for k in INHERITED_ENV if k in environ}


def sudo_ids(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """Who ran `sudo dynod ...` (SUDO_UID, SUDO_GID), when root runs it under sudo; else None."""
    if os.geteuid() != 0 or not environ.get("SUDO_UID", "").isdigit():
        return None
    uid = int(environ["SUDO_UID"])
    gid = environ.get("SUDO_GID", "")
    return uid, int(gid) if gid.isdigit() else uid
