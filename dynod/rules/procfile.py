"""The Procfile, read as Heroku, foreman and honcho read it: one `type: command` line per
process type, type names of letters, digits, `_` and `-`; blank lines and `#` comments skipped.

Foreman and honcho skip a line they cannot read; dynod refuses it, naming the line, because a
typo would otherwise scale a type that silently has no command.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from dynod.errors import DynodError

NAME = "Procfile"
LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*)$")
MAX_BYTES = 1024 * 1024  # a Procfile is a few lines; anything this big is not one


def parse(text: str, where: str = NAME) -> dict[str, str]:
    """{type: command}, in the file's order. A line that is not `type: command` (or a type given
    twice, or a type with no command) is a DynodError naming the line."""
    commands: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        shown = line if len(line) <= 80 else line[:77] + "..."
        if not match:
            raise DynodError(
                f"{where}, line {number}: {shown!r} is not `type: command`",
                "write each process as `type: command` (type: letters, digits, _ and -), "
                "or start the line with # to make it a comment",
            )
        ptype, command = match.group(1), match.group(2).strip()
        if not command:
            raise DynodError(
                f"{where}, line {number}: the {ptype!r} process type has no command",
                f"give a command after `{ptype}:`",
            )
        if ptype in commands:
            raise DynodError(
                f"{where}, line {number}: the {ptype!r} process type is defined twice",
                "keep one line per process type",
            )
        commands[ptype] = command
    return commands


def read(directory: str) -> dict[str, str]:
    """The Procfile of a directory, parsed; a missing or unreadable one is a DynodError."""
    return read_file(
        os.path.join(directory, NAME),
        f"no Procfile in {directory}",
        "add one (`web: python3 server.py`), or give the app's directory with "
        "`dynod apps:create APP --dir DIR`",
    )


def read_file(path: str, missing: str, fix: str) -> dict[str, str]:
    """A Procfile, parsed: `missing` and `fix` say what to do when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError):
        raise DynodError(missing, fix) from None
    except OSError as exc:
        raise DynodError(f"cannot read {path}: {exc.strerror}", "check its permissions") from None
    if len(data) > MAX_BYTES:
        raise DynodError(f"{path} is over {MAX_BYTES} bytes", "a Procfile holds one line a type")
    return parse(data.decode(errors="replace"), path)


def command(commands: Mapping[str, str], ptype: str, where: str) -> str:
    """The command of one type; DynodError naming the types there are when it is missing."""
    if ptype not in commands:
        known = ", ".join(commands) or "none"
        raise DynodError(
            f"the Procfile in {where} has no {ptype!r} process type (it has: {known})",
            f"add a line `{ptype}: COMMAND` to the Procfile, or use one of its types",
        )
    return commands[ptype]
