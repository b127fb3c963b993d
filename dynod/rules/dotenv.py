"""A `.env` file, read as `heroku local` (foreman) reads it: `NAME=VALUE` lines.

- blank lines and lines starting with `#` are skipped; an `export ` before the name is allowed;
- a value in single quotes is taken as it is; in double quotes `\\n` is a newline, `\\"` a quote
  and `\\\\` a backslash; an unquoted value is trimmed and ends at ` #` (a comment);
- anything else (no `=`, a bad name, an unclosed quote) is an error naming its line number, so a
  typo never becomes a config var silently.
"""

from __future__ import annotations

import re

from dynod.errors import DynodError
from dynod.rules.configvars import NAME

LINE = re.compile(r"^(?:export\s+)?([^=\s]+)\s*=\s*(.*)$")
DOUBLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def parse(text: str, where: str = ".env") -> dict[str, str]:
    """{NAME: value} in the file's order; the last of a name given twice wins (as in foreman)."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:
            raise _bad(where, number, "is not NAME=VALUE", "write it as NAME=VALUE, or remove it")
        name, rest = match.groups()
        if not NAME.fullmatch(name):
            raise _bad(
                where,
                number,
                f"has an invalid name {name!r}",
                "use letters, digits and underscores, not starting with a digit",
            )
        found[name] = _value(rest, where, number)
    return found


def _value(rest: str, where: str, number: int) -> str:
    if rest[:1] == "'":
        end = rest.find("'", 1)
        if end < 0:
            raise _bad(where, number, "has an unclosed ' quote", "close the quote on that line")
        _trailing(rest[end + 1 :], where, number)
        return rest[1:end]
    if rest[:1] == '"':
        value, end = _double(rest, where, number)
        _trailing(rest[end + 1 :], where, number)
        return value
    return rest.split(" #", 1)[0].strip()


def _double(rest: str, where: str, number: int) -> tuple[str, int]:
    """The value of a double-quoted string and the index of its closing quote."""
    out: list[str] = []
    i = 1
    while i < len(rest):
        char = rest[i]
        if char == "\\" and i + 1 < len(rest):
            nxt = rest[i + 1]
            out.append(DOUBLE_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if char == '"':
            return "".join(out), i
        out.append(char)
        i += 1
    raise _bad(where, number, 'has an unclosed " quote', "close the quote on that line")


def _trailing(after: str, where: str, number: int) -> None:
    after = after.strip()
    if after and not after.startswith("#"):
        raise _bad(
            where,
            number,
            f"has text after the closing quote ({after[:20]!r})",
            "put the whole value inside the quotes",
        )


def _bad(where: str, number: int, problem: str, fix: str) -> DynodError:
    return DynodError(f"{where}, line {number}: {problem}", fix)
