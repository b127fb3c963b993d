"""`dynod up`'s output: every dyno's lines behind its name, `web.1  | text`, as foreman and
honcho print them. The names are padded to one width; on a terminal each dyno's prefix has a
colour of its own (foreman's order), elsewhere (a pipe, a file, NO_COLOR) the text is plain."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import click

COLOURS = ("cyan", "yellow", "green", "magenta", "red", "blue", "bright_cyan", "bright_yellow")

# `2026-11-25T22:00:00.000000+00:00 app[web.1]: text` (dynod/logs/book.py LogLine)
LOG_LINE = re.compile(r"^(\S+) (app|heroku)\[([^\]]+)\]: ?(.*)$")


@dataclass(frozen=True)
class Parsed:
    time: str
    platform: bool  # heroku[...]: the platform's line about the dyno, not the dyno's output
    name: str  # web.1, router
    text: str


def parse(line: str) -> Parsed | None:
    match = LOG_LINE.match(line.rstrip("\n"))
    if not match:
        return None
    stamp, source, name, text = match.groups()
    return Parsed(stamp, source == "heroku", name, text)


@dataclass
class Prefixer:
    colour: bool
    width: int = 0
    _colours: dict[str, str] = field(default_factory=dict)

    def expect(self, names: list[str]) -> None:
        """Names known before their first line: the column is as wide as the widest."""
        for name in names:
            self._colour_of(name)
        self.width = max([self.width, *(len(n) for n in names)])

    def format(self, name: str, text: str) -> str:
        self.width = max(self.width, len(name))
        prefix = f"{name:<{self.width}} |"
        if self.colour:
            prefix = click.style(prefix, fg=self._colour_of(name))
        return f"{prefix} {text}".rstrip()

    def _colour_of(self, name: str) -> str:
        if name not in self._colours:
            self._colours[name] = COLOURS[len(self._colours) % len(COLOURS)]
        return self._colours[name]
