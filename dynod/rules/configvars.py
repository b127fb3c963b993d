"""Heroku's rules for config var names, and `config:set NAME=VALUE ...`'s words.

Heroku's policy: a name holds only letters, digits and underscores (no dash), and does not start
with a digit, so every language's environment API and every shell can read it. A value is any
string: newlines and `=` included (only the first `=` of a word splits name from value).
"""

from __future__ import annotations

import re

from dynod.errors import DynodError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")

# Set by the platform in every dyno (DYNO, PORT on web dynos, HEROKU_PRIVATE_IP in a space, the
# HEROKU_DNS_* names with DNS discovery): a config var cannot take one of these names.
PLATFORM_VARS = ("DYNO", "PORT", "HEROKU_PRIVATE_IP")
PLATFORM_PREFIX = "HEROKU_DNS_"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise DynodError(
            f"invalid config var name {name!r}",
            "use letters, digits and underscores, not starting with a digit (e.g. DATABASE_URL)",
        )
    return name


def parse_assignments(words: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`A=1 B=x=y` -> {'A': '1', 'B': 'x=y'}; a word without `=` or with a bad name is refused
    before anything is stored."""
    if not words:
        raise DynodError("no config vars given", "give NAME=VALUE pairs, e.g. `config:set A=1`")
    assigned: dict[str, str] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals:
            raise DynodError(f"{word!r} is not NAME=VALUE", f"write it as {word}=VALUE")
        assigned[check_name(name)] = value
    return assigned


def check_changes(changes: dict[str, str | None]) -> None:
    """A config change: names to set (a value) or unset (None). Errors name a var, never show
    its value (values are secrets)."""
    if not changes:
        raise DynodError("no config vars given", "give at least one NAME=VALUE (or NAME to unset)")
    for name, value in changes.items():
        check_name(name)
        if name in PLATFORM_VARS or name.startswith(PLATFORM_PREFIX):
            raise DynodError(
                f"{name} is set by the platform in every dyno and cannot be a config var",
                "choose another name",
            )
        if value is not None and "\0" in value:
            raise DynodError(f"the value of {name} holds a NUL byte", "remove it")
        if value is not None and not _utf8(value):
            raise DynodError(
                f"the value of {name} is not valid Unicode text (a lone surrogate)",
                "send the value as UTF-8 text",
            )


def _utf8(value: str) -> bool:
    """JSON may carry "\\ud800", which no environment (UTF-8 bytes) can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def size(variables: dict[str, str]) -> int:
    """How much room the vars take, in UTF-8 bytes, as Heroku counts its 32 kB."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in variables.items())
