"""The daemon's API: HTTP/1.1 and JSON on a Unix socket, like Docker's, so `curl --unix-socket`
works as well as the CLI.

    GET    /v1/status                            the daemon's settings
    GET    /v1/apps                              apps and their dyno counts
    GET    /v1/dynos[?app=APP]                   dynos
    POST   /v1/apps/APP/dynos                    start a dyno {type, command, cwd, env, detach}:
                                                 with detach, 201 and the dyno; without, an NDJSON
                                                 stream {"dyno": ...}, {"line": ...}..., {"exit": N}
                                                 (closing it stops the dyno, like Ctrl-C)
    DELETE /v1/apps/APP/dynos[/NAME][?grace=S]   stop one dyno, or all of the app's
    GET    /v1/logs[?app=&dyno=&tail=N&follow=1] Heroku-format lines, followed if asked

Errors are JSON `{"error": ..., "fix": ...}` with a 4xx/5xx status. Access is the socket file's:
root, and the `dynod` group when it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11

from dynod.errors import DynodError, NotFound
from dynod.logs import LogLine, OutputFile
from dynod.state import Dyno

if TYPE_CHECKING:
    from dynod.daemon import Daemon

MAX_BODY = 1 << 20
OUTPUT_POLL = 0.05  # seconds between looks at a foreground dyno's output


@dataclass
class Request:
    method: str
    path: list[str]
    query: dict[str, str]
    body: Any
    uid: int
    gid: int


@dataclass
class Stream:
    """A streamed answer; `closed` is set when the client goes away."""

    content_type: str
    chunks: Callable[[asyncio.Event], AsyncIterator[bytes]]
    on_close: Callable[[], None] | None = None


Answer = tuple[int, Any] | Stream


class ApiServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, path: str, group: int | None) -> None:
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=path)
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(path, 0, group)
            os.chmod(path, 0o660)
        self._path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    # ---------------------------------------------------------------- HTTP plumbing
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, gid = struct.unpack("3i", creds)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request = await self._read_request(conn, reader, uid, gid)
                if request is None:
                    break
                answer = await self._dispatch(request)
                await self._send(conn, writer, reader, answer)
                if conn.our_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, uid: int, gid: int
    ) -> Request | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                break
        assert head is not None
        url = urllib.parse.urlsplit(head.target.decode())
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = None
        return Request(
            head.method.decode(),
            [urllib.parse.unquote(p) for p in url.path.strip("/").split("/") if p],
            dict(urllib.parse.parse_qsl(url.query)),
            parsed,
            uid,
            gid,
        )

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        answer: Answer,
    ) -> None:
        if isinstance(answer, Stream):
            await self._send_stream(conn, writer, reader, answer)
            return
        status, obj = answer
        payload = json.dumps(obj, indent=None).encode() + b"\n"
        headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=payload)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _send_stream(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        stream: Stream,
    ) -> None:
        closed = asyncio.Event()

        async def watch_client() -> None:
            # The client sends nothing more while it reads a stream: EOF means it went away.
            with contextlib.suppress(Exception):
                while await reader.read(4096):
                    pass
            closed.set()

        watcher = asyncio.get_running_loop().create_task(watch_client())
        headers = [("content-type", stream.content_type), ("transfer-encoding", "chunked")]
        try:
            writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
            async for chunk in stream.chunks(closed):
                if closed.is_set():
                    break
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
            if not closed.is_set():
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            if stream.on_close is not None:
                stream.on_close()

    async def _dispatch(self, request: Request) -> Answer:
        if request.body is None:
            return 400, {"error": "the request body is not JSON", "fix": "send a JSON object"}
        try:
            return await self._route(request)
        except DynodError as exc:
            return exc.status, exc.to_json()
        except Exception as exc:  # noqa: BLE001 - the API never dies of one request
            self.daemon.log.emit(None, "dynod", f"error: {request.method} {request.path}: {exc!r}")
            return 500, {"error": f"internal error: {exc}", "fix": "see the daemon's log"}

    # ---------------------------------------------------------------- routes
    async def _route(self, r: Request) -> Answer:
        routes: dict[tuple[str, int, str], Callable[[Request], Awaitable[Answer]]] = {
            ("GET", 2, "status"): self._status,
            ("GET", 2, "apps"): self._apps,
            ("GET", 2, "dynos"): self._dynos,
            ("GET", 2, "logs"): self._logs,
            ("POST", 4, "apps"): self._run,
            ("DELETE", 4, "apps"): self._stop,
            ("DELETE", 5, "apps"): self._stop,
        }
        if not r.path or r.path[0] != "v1" or len(r.path) < 2:
            raise NotFound(f"no such endpoint /{'/'.join(r.path)}", "see the API list in api.py")
        handler = routes.get((r.method, len(r.path), r.path[1]))
        if handler is None or (len(r.path) >= 4 and r.path[3] != "dynos"):
            raise NotFound(
                f"no such endpoint {r.method} /{'/'.join(r.path)}", "see the API list in api.py"
            )
        return await handler(r)

    async def _status(self, r: Request) -> Answer:
        return 200, self.daemon.status()

    async def _apps(self, r: Request) -> Answer:
        state = self.daemon.state
        return 200, [{"name": a, "dynos": len(state.dynos(a))} for a in state.apps()]

    async def _dynos(self, r: Request) -> Answer:
        app = r.query.get("app")
        dynos = self.daemon.app_dynos(app) if app else self.daemon.state.dynos()
        return 200, [d.to_json() for d in dynos]

    async def _run(self, r: Request) -> Answer:
        body = dict(r.body) if isinstance(r.body, dict) else {}
        body["app"] = r.path[2]
        dyno = await self.daemon.run_dyno(body, r.uid, r.gid)
        if dyno.detached:
            return 201, dyno.to_json() | self.daemon.timings.get(dyno.id, {})
        return self._foreground(dyno)

    def _foreground(self, dyno: Dyno) -> Stream:
        """`dynod run` without --detach: the dyno's output, then its exit status.

        The stream reads the dyno's output file itself, at the pace the client reads: nothing is
        dropped however much the dyno writes, and the exit comes after the last byte. The file
        is opened before control returns to the event loop, so it can be read to the end even
        after the stopped dyno's file is unlinked.
        """
        reader = OutputFile(dyno.log_path, 0, reclaim=False)
        reader.open()
        exit_wait = asyncio.ensure_future(self.daemon.wait_exit(dyno))

        async def chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
            yield _ndjson({"dyno": dyno.to_json()})
            gone = asyncio.ensure_future(closed.wait())
            try:
                while not gone.done():
                    lines = reader.read_lines()
                    for line in lines:
                        yield _ndjson({"line": line})
                    if lines:
                        continue
                    if exit_wait.done():
                        for line in reader.flush():
                            yield _ndjson({"line": line})
                        yield _ndjson({"exit": exit_wait.result()})
                        return
                    await asyncio.wait({exit_wait, gone}, timeout=OUTPUT_POLL)
            finally:
                gone.cancel()

        def on_close() -> None:
            reader.close()
            if not exit_wait.done() and self.daemon.state.dyno(dyno.id) is not None:
                # The client went away before the process ended (the CLI was killed, or
                # Ctrl-C): the dyno goes too.
                self.daemon.background(self.daemon.stop_dyno(dyno))
            exit_wait.cancel()

        return Stream("application/x-ndjson", chunks, on_close)

    async def _stop(self, r: Request) -> Answer:
        grace = _float(r.query.get("grace"))
        app = r.path[2]
        if len(r.path) == 5:
            dynos = [self.daemon.find(app, r.path[4])]
        else:
            dynos = self.daemon.app_dynos(app)
        await asyncio.gather(*(self.daemon.stop_dyno(d, grace) for d in dynos))
        timings = {d.name: self.daemon.timings.pop(d.id, {}).get("teardown_ms") for d in dynos}
        return 200, {"stopped": [d.name for d in dynos], "teardown_ms": timings}

    async def _logs(self, r: Request) -> Answer:
        app, dyno_name = r.query.get("app"), r.query.get("dyno")
        if app:
            self.daemon.app_dynos(app)  # unknown app: a clear 404
        tail_given = _float(r.query.get("tail"))
        tail = 100 if tail_given is None else int(tail_given)
        follow = r.query.get("follow") in ("1", "true", "yes")
        log = self.daemon.log

        def wanted(line: LogLine) -> bool:
            if app and line.app != app:
                return False
            return not dyno_name or line.source.endswith(f"[{dyno_name}]")

        async def chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
            with log.follow(wanted) as queue:
                for line in log.recent(wanted, tail):
                    yield f"{line}\n".encode()
                while follow and not closed.is_set():
                    try:
                        line = await asyncio.wait_for(queue.get(), 0.5)
                    except TimeoutError:
                        continue
                    if line is None:
                        return
                    yield f"{line}\n".encode()

        return Stream("text/plain; charset=utf-8", chunks)


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise DynodError(f"not a number: {value!r}", "give seconds, e.g. ?grace=5") from None
    if not 0 <= number < float("inf"):  # also refuses nan
        raise DynodError(f"not a usable number: {value!r}", "give a finite number >= 0")
    return number
