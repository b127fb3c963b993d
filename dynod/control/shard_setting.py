"""The shard size a state's dynos were placed with (machine.Net: a dyno's bridge follows from
its slot and --shard-ports). A daemon restarted with another size would look for adopted dynos
on other bridges (and remove theirs as unknown): it is refused while dynos run, and the size is
kept in the state directory for the next start."""

from __future__ import annotations

import contextlib
import os

from dynod.errors import DynodError
from dynod.kernel.addressing import SHARD_PORTS
from dynod.state.store import DB_FILE

FILE = "shard-ports"
LEGACY_SHARD_PORTS = 1000  # every dynod before the size was recorded


def chosen(state_dir: str, given: int | None) -> int:
    """The size to run with: the one given to `dynod daemon --shard-ports`, else the state's
    (a daemon upgraded to another default keeps placing dynos as before), else the default.
    A state made before the size was recorded (a `state.db` without this file) was placed on
    bridges of 1,000, the default then."""
    if given is not None:
        return given
    before = recorded(state_dir)
    if before is not None:
        return before
    if os.path.exists(os.path.join(state_dir, DB_FILE)):
        return LEGACY_SHARD_PORTS
    return SHARD_PORTS


def recorded(state_dir: str) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError), open(_path(state_dir)) as f:
        return int(f.read().strip())
    return None


def keep(state_dir: str, wanted: int, dynos: int) -> None:
    """Refuse `wanted` when `dynos` dynos of the state were placed with another size; else
    record it."""
    before = recorded(state_dir)
    if before is not None and before != wanted and dynos:
        raise DynodError(
            f"the state's {dynos} dynos are on bridges of {before} ports each; "
            f"--shard-ports {wanted} would look for them on other bridges",
            f"start the daemon with --shard-ports {before}, or stop every dyno first",
        )
    path = _path(state_dir)
    with open(path + ".new", "w") as f:
        f.write(f"{wanted}\n")
    os.chmod(path + ".new", 0o600)
    os.replace(path + ".new", path)


def _path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE)
