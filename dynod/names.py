"""Heroku's naming rules for apps, process types and dynos."""

from __future__ import annotations

import re

from dynod.errors import DynodError

APP_NAME = re.compile(r"^[a-z][a-z0-9-]{1,28}[a-z0-9]$")
PROCESS_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DYNO_NAME = re.compile(r"^([A-Za-z0-9_-]{1,128})\.([1-9][0-9]{0,5})$")
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")

# Dynos of these types never take router traffic or run as long-lived processes.
RELEASE_TYPE = "release"
WEB_TYPE = "web"


def check_app(name: str) -> str:
    if not APP_NAME.fullmatch(name or ""):
        raise DynodError(
            f"invalid app name {name!r}",
            "use 3 to 30 characters: lowercase letters, digits and dashes, "
            "starting with a letter and not ending with a dash",
        )
    return name


def check_process_type(ptype: str) -> str:
    if not PROCESS_TYPE.fullmatch(ptype or ""):
        raise DynodError(
            f"invalid process type {ptype!r}",
            "use 1 to 128 letters, digits, '_' or '-', as in a Procfile (web, worker, clock)",
        )
    if ptype == RELEASE_TYPE:
        raise DynodError(
            "the release process type is not a long-running dyno",
            "give the process another type, e.g. --type worker",
        )
    return ptype


def parse_dyno_name(name: str) -> tuple[str, int]:
    """'web.1' -> ('web', 1)."""
    match = DYNO_NAME.fullmatch(name or "")
    if not match:
        raise DynodError(
            f"invalid dyno name {name!r}", "dyno names are TYPE.NUMBER, e.g. web.1 or worker.2"
        )
    return match.group(1), int(match.group(2))


def lowest_free_number(taken: set[int]) -> int:
    """Dyno numbers start at 1 and reuse the lowest one free, as web.1, web.2 ... on Heroku."""
    number = 1
    while number in taken:
        number += 1
    return number


def parse_procfile(text: str) -> dict[str, str]:
    """Procfile lines `type: command`; blank lines and comments are skipped."""
    commands: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PROCFILE_LINE.match(line)
        if match:
            commands[match.group(1)] = match.group(2).strip()
    return commands
