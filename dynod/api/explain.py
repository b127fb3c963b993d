"""`?explain=1` on any request: the answer comes back with the commands (netns/record.py) that
do what the daemon did for it, in order.

- a JSON answer becomes `{"answer": ANSWER, "explain": [COMMAND, ...]}`;
- an error keeps its shape and gets an "explain" list too (what was done before the refusal,
  and undone after it);
- a stream (a foreground `run`) starts with one `{"explain": [...]}` line: its commands are those
  up to the dyno's start (what its stop does later is not part of this request's answer).

Each command is a string of shell text; a few span lines (an `nft -f -` here-document)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from dynod.api import frames
from dynod.api.wire import Answer, Request, Stream, Upgrade, ndjson
from netns import record

FLAG = "explain"
HEADER = "# what dynod did, as the commands a person would type (--explain):"
NOTHING = "# --explain: dynod changed nothing in the kernel for this"


def render(commands: list[str]) -> str:
    """The commands as one shell script: a header comment, then one command per line (a
    here-document spans several)."""
    return "\n".join([HEADER, *commands] if commands else [NOTHING])


def wanted(request: Request) -> bool:
    return request.query.get(FLAG, "") in ("1", "true", "yes")


async def explained(answer: Callable[[], Awaitable[Answer]]) -> Answer:
    """The answer, with what the kernel side did while it was being made."""
    with record.recording() as rec:
        found = await answer()
    return attach(found, rec.commands())


def attach(answer: Answer, commands: list[str]) -> Answer:
    if isinstance(answer, Stream):
        return _prefixed(answer, ndjson({FLAG: commands}))
    if isinstance(answer, Upgrade):
        return _told_first(answer, commands)
    status, obj = answer
    if status >= 400 and isinstance(obj, dict):
        return status, obj | {FLAG: commands}
    return status, {"answer": obj, FLAG: commands}


def _prefixed(stream: Stream, first: bytes) -> Stream:
    inner = stream.chunks

    async def chunks(closed: Any) -> AsyncIterator[bytes]:
        yield first
        generator = inner(closed)
        try:
            async for chunk in generator:
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                await generator.aclose()  # type: ignore[attr-defined]

    return Stream(stream.content_type, chunks, stream.on_close)


def _told_first(upgrade: Upgrade, commands: list[str]) -> Upgrade:
    """An attached one-off: the commands are its first stderr frame, as a foreground `run`
    prints them on stderr once the dyno has started."""
    inner = upgrade.session

    async def session(reader: Any, writer: Any, rest: bytes) -> None:
        writer.write(frames.data(frames.STDERR, (render(commands) + "\n").encode()))
        await inner(reader, writer, rest)

    return Upgrade(upgrade.protocol, session, upgrade.refused)
