"""The API's streamed answers: a foreground dyno's output and exit (`dynod run`), and the log
(`dynod logs`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dynod.api.wire import Stream, ndjson
from dynod.control.dynos import DynoService
from dynod.logs.book import (
    FOREGROUND_WINDOW,
    LogBook,
    OutputFile,
    about,
    shared_puncher,
)
from dynod.state.store import Dyno

OUTPUT_POLL = 0.05  # seconds between looks at a foreground dyno's output
OUTPUT_SLICE = 16 << 10  # bytes of it turned into lines before the event loop is let go


def foreground(dyno: Dyno, dynos: DynoService) -> Stream:
    """`dynod run` without --detach: the dyno's output, then its exit status.

    The stream reads the dyno's output file itself, at the pace the client reads, in slices
    of OUTPUT_SLICE bytes with the event loop let go between two. A dyno that gets more than
    the window (logs.FOREGROUND_WINDOW) ahead of its client has the older bytes skipped, and the
    stream says so with a line in Logplex's words (Error L10) that also carries
    `"dropped"` and `"skipped_bytes"`. The exit comes after the last byte. The file is
    opened before control returns to the event loop, so it can be read to the end even
    after the stopped dyno's file is unlinked.
    """
    reader = OutputFile(
        dyno.log_path,
        0,
        keep=2 * FOREGROUND_WINDOW,
        puncher=shared_puncher(),
        window=FOREGROUND_WINDOW,
    )
    reader.open()
    exit_wait = asyncio.ensure_future(dynos.wait_exit(dyno))

    def batch(lines: list[str], final: bool = False) -> bytes:
        dropped, skipped = reader.dropped, reader.skipped
        report = reader.overflow(final=final)
        # One message per slice: encoding a list is one C call, a message per line is not.
        out = ndjson({"lines": lines}) if lines else b""
        if report:
            notice = {"line": report, "dropped": dropped, "skipped_bytes": skipped}
            out += ndjson(notice)
        return out

    async def chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
        yield ndjson({"dyno": dyno.to_json()})
        gone = asyncio.ensure_future(closed.wait())
        try:
            while not gone.done():
                offset = reader.offset
                if out := batch(reader.read_lines(OUTPUT_SLICE)):
                    yield out
                if reader.offset != offset:
                    await asyncio.sleep(0)  # others' turn between two slices
                    continue
                if exit_wait.done():
                    yield batch(reader.flush(OUTPUT_SLICE), final=True)
                    yield ndjson({"exit": exit_wait.result()})
                    return
                await asyncio.wait({exit_wait, gone}, timeout=OUTPUT_POLL)
        finally:
            gone.cancel()

    def on_close() -> None:
        reader.close()
        if not exit_wait.done():
            # The client went away before the process ended (the CLI was killed, or
            # Ctrl-C): the dyno goes too.
            dynos.stop_later(dyno)
        exit_wait.cancel()

    return Stream("application/x-ndjson", chunks, on_close)


def log_lines(
    log: LogBook, app: str | None, dyno_name: str | None, tail: int, follow: bool
) -> Stream:
    """`dynod logs`: the last `tail` lines of the app (or dyno), then new ones if `follow`."""

    wanted = about(app, dyno_name)

    async def chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
        with log.follow(wanted) as queue:
            for line in log.recent(wanted, tail):
                yield f"{line}\n".encode()
            while follow and not closed.is_set():
                try:
                    followed = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    continue
                if followed is None:
                    return
                yield f"{followed}\n".encode()

    return Stream("text/plain; charset=utf-8", chunks)
