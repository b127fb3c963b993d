"""A router worker process: `python -m dynod.router.worker SETTINGS_JSON`, started and
supervised by the daemon (`dynod.router.workers`), one per core.

It serves the listening sockets the daemon hands it (`wire.send_listen`: the daemon binds, so a
worker needs no right to bind port 80) with a `Router` of its own, routes by the last table the
daemon sent, and sends its log lines back in batches. It has no state and reads nothing from
disk: it exits when the daemon's end of its control socket closes (the daemon stopped or died).
A root daemon starts it through ``setpriv`` with CAP_SETUID, CAP_SETGID and CAP_DAC_READ_SEARCH
alone; once its imports are done, before it reads a byte from anyone, it becomes the user the
daemon chose (netns/identity.py) and holds no capability: the firewall lets that user's
connections reach a web dyno's PORT. Its event loop is uvloop's: with the router's callbacks,
asyncio's own loop was the largest cost per request (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from typing import Any

import uvloop

from dynod.router.routes import RouteTable
from dynod.router.server import Router
from dynod.router.turns import Turns
from dynod.router.wire import frame, read_frame, recv_listen, routed
from netns import identity

__all__ = ["LogBatcher", "main"]

_logger = logging.getLogger("dynod.router.worker")

# Log lines are sent at most this long after their request ended, or when this many wait.
BATCH_SECONDS = 0.02
BATCH_LINES = 256
# Frames waiting for the daemon beyond this are dropped (and counted): a stalled daemon must
# not make a worker grow without bound.
BACKLOG_BYTES = 8 << 20


class LogBatcher:
    """Collects (line, app) and writes them to the daemon as one frame per batch."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.batch: list[tuple[str, str | None]] = []
        self.dropped = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: str, app: str | None) -> None:
        self.batch.append((line, app))
        if len(self.batch) >= BATCH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self.batch = self.batch, []
        if not batch or self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > BACKLOG_BYTES:
            self.dropped += len(batch)
            return
        lines: list[Any] = [list(item) for item in batch]
        if self.dropped:
            note = f"at=warning router worker dropped {self.dropped} log lines: daemon too slow"
            lines.append([note, None])
            self.dropped = 0
        self.writer.write(frame({"logs": lines}))


def preload() -> None:
    """Import now what the worker runs but Python imports only at its first use, while the
    files can still be read (the change of user may leave none readable): uvloop resolves the
    address of every connection to a dyno (`loop.sock_connect`: getaddrinfo with type 0, past
    its numeric fast path), which encodes the host with the idna codec, a module loaded on its
    first use. tests/unit/router/test_worker_imports.py checks that serving loads nothing."""
    "".encode("idna")


def drop_root(settings: dict[str, Any]) -> None:
    """Become the user of `settings` (none: stay as started, a daemon that is not root's)."""
    if settings.get("user") is not None:
        identity.become(int(settings["user"]))


async def serve(settings: dict[str, Any]) -> None:
    ctl = socket.socket(fileno=int(settings["ctl_fd"]))
    listen_channel = socket.socket(fileno=int(settings["listen_fd"]))
    listen_channel.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=ctl)
    logs = LogBatcher(writer)
    router = Router(
        RouteTable().resolve,
        logs.add,
        socket_mark=settings.get("socket_mark"),
        max_client_connections=int(settings["max_client_connections"]),
        turns=Turns(int(settings["turns_fd"])),
    )
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    listening: asyncio.Queue[tuple[str, socket.socket | None]] = asyncio.Queue()

    def on_listen_message() -> None:
        try:
            while (message := recv_listen(listen_channel)) is not None:
                listening.put_nowait(message)
        except (EOFError, OSError):
            if not done.done():
                done.set_result(None)

    async def apply_listening() -> None:
        while True:
            key, sock = await listening.get()
            if key == "main" and sock is not None:
                await router.start("", 0, sock=sock)
            elif sock is not None:
                await router.listen(key, 0, sock=sock)
            else:
                await router.unlisten(key)

    async def apply_tables() -> None:
        table = RouteTable()
        try:
            while (message := await read_frame(reader)) is not None:
                if (new := routed(table, message)) is not None:
                    table, gone = new
                    router.update(table, gone)
        except (KeyError, TypeError, ValueError) as exc:
            # a change this table cannot take: end, so that the daemon starts this worker again
            # with the whole table rather than let it route by a table that went astray
            _logger.warning("a route change it cannot apply (%r): exiting", exc)
        if not done.done():
            done.set_result(None)  # the daemon is gone, or the table went astray

    loop.add_reader(listen_channel.fileno(), on_listen_message)
    tasks = [asyncio.create_task(apply_listening()), asyncio.create_task(apply_tables())]
    try:
        await done
    finally:
        loop.remove_reader(listen_channel.fileno())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await router.close()
        logs.flush()
        writer.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # the daemon reads its standard error and says which worker it is (worker_stderr.py)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = json.loads(args[0])
    preload()
    drop_root(settings)  # everything it runs is imported by now
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
