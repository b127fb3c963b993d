"""The recorder: every netns function that changes the kernel reports, as it does so, the shell
command a person would type to do the same (`ip netns add X`, `bridge fdb replace ...`,
`nft -f - <<'NFT' ... NFT`). `--explain` prints these, so what it shows is built from the very
arguments of the calls and cannot drift from the code.

Who is listening is a context variable: `with recording() as rec:` around an API request (or the
daemon's start-up) collects the commands of that request only, also those run on the kernel
thread (netns/worker.py runs each job in a copy of its caller's context) or in tasks the request
started. A recording is closed when its block ends: work that outlives the request (a detached
dyno's later restarts) no longer adds to it. Nobody listening costs one context variable read.

A command is reported after the call succeeded, as the call's own arguments give it; a call that
changed nothing (an address that was already there) reports nothing. Inside `namespace.entered()`
commands are reported as run in that namespace: `ip -n NS ...`, `ip netns exec NS ...`.
"""

from __future__ import annotations

import contextlib
import contextvars
import shlex
import threading
from collections.abc import Iterator

MAX_COMMANDS = 2_000  # per recording: the daemon's start-up is kept in memory while it runs
MAX_CHARS = 1 << 20  # a whole ruleset is one command; this bounds a recording's size


class Recording:
    """The commands of one request, in the order they were performed (any thread)."""

    def __init__(self, max_commands: int = MAX_COMMANDS, max_chars: int = MAX_CHARS) -> None:
        self.max_commands = max_commands
        self.max_chars = max_chars
        self._commands: list[str] = []
        self._chars = 0
        self._dropped = 0
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, command: str) -> None:
        with self._lock:
            if self._closed:
                return
            if (
                len(self._commands) >= self.max_commands
                or self._chars + len(command) > self.max_chars
            ):
                self._dropped += 1
                return
            self._commands.append(command)
            self._chars += len(command)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def commands(self) -> list[str]:
        """What was recorded, and a closing comment when the bound left some out."""
        with self._lock:
            found = list(self._commands)
            if self._dropped:
                found.append(f"# ... and {self._dropped} more commands, not kept")
            return found


_current: contextvars.ContextVar[Recording | None] = contextvars.ContextVar(
    "netns_recording", default=None
)
_inside: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "netns_recording_inside", default=None
)


@contextlib.contextmanager
def recording(into: Recording | None = None) -> Iterator[Recording]:
    """Collect the commands performed in this context until the block ends, then close."""
    rec = Recording() if into is None else into
    token = _current.set(rec)
    try:
        yield rec
    finally:
        rec.close()
        _current.reset(token)


def active() -> bool:
    """Is anyone listening? Callers check it before work done only for the command's text (a
    link's name looked up from its index)."""
    rec = _current.get()
    return rec is not None and not rec.closed


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Commands reported in this block run in network namespace NETNS (namespace.entered)."""
    token = _inside.set(netns)
    try:
        yield
    finally:
        _inside.reset(token)


def note(*words: str) -> None:
    """Report the command made of these words (quoted for the shell as needed)."""
    rec = _current.get()
    if rec is None or rec.closed:
        return
    rec.add(_where(shlex.join(words)))


def note_text(text: str) -> None:
    """Report a command given as shell text: a here-document, a redirection, a comment."""
    rec = _current.get()
    if rec is None or rec.closed:
        return
    rec.add(_where(text))


def here_document(command: str, text: str, end: str = "EOF") -> str:
    """`COMMAND <<'END'`, TEXT, `END`: text handed over on stdin, exactly as given."""
    body = text if text.endswith("\n") else text + "\n"
    if f"\n{end}\n" in f"\n{body}":
        raise ValueError(f"the text holds a line {end!r}: pick another end word")
    return f"{command} <<'{end}'\n{body}{end}"


def _where(command: str) -> str:
    netns = _inside.get()
    if netns is None or command.startswith("#"):
        return command
    name = shlex.quote(netns)
    if command.startswith("ip "):
        return f"ip -n {name} {command[3:]}"
    return f"ip netns exec {name} {command}"
