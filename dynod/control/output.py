"""What dynos write: each dyno's output file read in bounded slices into the log book, as
`app[TYPE.N]` lines (and Logplex's L10 when a dyno writes faster than its limit)."""

from __future__ import annotations

import asyncio
import contextlib

from dynod.logs.book import FOREGROUND_WINDOW, LogBook, OutputFile, OutputLimit, shared_puncher
from dynod.logs.changes import Changes
from dynod.state.store import Dyno, State


class Outputs:
    """One reader per running dyno; the state keeps how far each was read."""

    def __init__(self, state: State, log: LogBook) -> None:
        self.state = state
        self.log = log
        self._readers: dict[int, OutputFile] = {}
        self.changes = Changes()  # which files were written since the last poll

    def open(self, dyno: Dyno) -> None:
        """Start reading the dyno's output where the state says it was left (kept if open)."""
        if dyno.id not in self._readers:
            self._add(dyno)

    def reopen(self, dyno: Dyno) -> None:
        """A dyno adopted after a daemon restart: a new reader from the recorded offset."""
        self.close(dyno.id)
        self._add(dyno)

    def _add(self, dyno: Dyno) -> None:
        # Opened and watched before the first poll reads it: no write falls between the two.
        reader = self._readers[dyno.id] = self._reader(dyno)
        with contextlib.suppress(OSError):  # not openable now: polled, each poll tries again
            reader.open()
        self.changes.watch(dyno.id, reader.fileno())

    def close(self, dyno_id: int) -> None:
        self.changes.forget(dyno_id)
        reader = self._readers.pop(dyno_id, None)
        if reader is not None:
            reader.close()

    def shutdown(self) -> None:
        """The change watch goes (the readers stay open for a drain)."""
        self.changes.close()

    @staticmethod
    def _reader(dyno: Dyno) -> OutputFile:
        # A foreground dyno's output is also read by its `dynod run`, at the terminal's pace:
        # the last 2 windows stay on disk for it (each reader skips what the other punched).
        keep = 0 if dyno.detached else 2 * FOREGROUND_WINDOW
        return OutputFile(
            dyno.log_path, dyno.log_offset, keep=keep, limit=OutputLimit(), puncher=shared_puncher()
        )

    async def read_all(self) -> None:
        # Only the files written since the last poll (inotify: changes.py), and those still
        # busy; a quiet dyno costs nothing. The state is read only for dynos that wrote
        # something. Each reader reads at most READ_BUDGET bytes and hands over at most its rate
        # limit of lines, so a flooding dyno costs one bounded slice of a poll, and the others
        # still get theirs; what it left stays due for the next poll.
        for dyno_id in self.changes.due():
            reader = self._readers.get(dyno_id)
            if reader is None:
                continue  # forgotten while an earlier dyno's lines were handed over
            if reader.quiet():
                self.changes.settled(dyno_id)
                continue
            offset = reader.offset
            lines = reader.read_lines()
            report = reader.overflow()
            dyno = self.state.dyno(dyno_id) if reader.offset != offset or report else None
            if dyno is None:
                continue
            self._emit(dyno, lines, report)
            self.state.update_dyno(dyno, log_offset=reader.offset)
            await asyncio.sleep(0)  # the API and the router between two dynos' output

    def drain(self, dyno: Dyno, final: bool = False) -> None:
        """The output not read yet: bounded like a poll (flush reads at most the window)."""
        reader = self._readers.get(dyno.id)
        if reader is None:
            return
        lines = reader.flush() if final else reader.read_lines()
        self._emit(dyno, lines, reader.overflow(final=final))
        if reader.offset != dyno.log_offset and self.state.dyno(dyno.id) is not None:
            self.state.update_dyno(dyno, log_offset=reader.offset)

    def _emit(self, dyno: Dyno, lines: list[str], report: str | None) -> None:
        for line in lines:
            self.log.emit(dyno.app, f"app[{dyno.name}]", line)
        if report:
            # Logplex's source for L10 is itself: heroku[logplex], for the dyno's app.
            self.log.emit(dyno.app, "heroku[logplex]", report, dyno=dyno.name)
