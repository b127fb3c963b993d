"""The daemon's API: HTTP/1.1 and JSON on a Unix socket, like Docker's, so `curl --unix-socket`
works as well as the CLI.

    GET    /v1/status                            the daemon's settings
    GET    /v1/spaces                            spaces: range, bridge, DNS, router, NAT, apps
    POST   /v1/spaces                            create a space {name, cidr?, nat_ip?}: 201, it
    GET    /v1/spaces/SPACE                      one of them
    DELETE /v1/spaces/SPACE                      destroy a space without apps: {"destroyed": SPACE}
    GET    /v1/spaces/SPACE/trusted-ips          its trusted IP ranges: ["0.0.0.0/0", ...]
    POST   /v1/spaces/SPACE/trusted-ips          trust a range {cidr}: 201, the ranges
    DELETE /v1/spaces/SPACE/trusted-ips/CIDR     stop trusting a range (10.0.0.0%2F8): the ranges
    GET    /v1/apps                              apps: space, routing, features, dyno counts
    POST   /v1/apps                              create an app {name, space?, internal_routing?,
                                                 dir?}: 201, it
    GET    /v1/apps/APP                          one of them
    DELETE /v1/apps/APP                          destroy an app, stopping its dynos:
                                                 {"stopped": [dyno names]}
    GET    /v1/apps/APP/features                 [{name, enabled, description}]
    PUT    /v1/apps/APP/features/FEATURE         {enabled}: {name, enabled, note}
    GET    /v1/apps/APP/config-vars              {"vars": {NAME: value}, "version": N}
    PATCH  /v1/apps/APP/config-vars              {NAME: "value" | null}: a release, restarts
    GET    /v1/dynos[?app=APP]                   dynos, with memory_mb and memory_quota_mb
    POST   /v1/apps/APP/dynos                    start a dyno {type, command, cwd, env, detach,
                                                 size}:
                                                 with detach, 201 and the dyno; without, an NDJSON
                                                 stream {"dyno": ...}, {"line": ...}..., {"exit": N}
                                                 (closing it stops the dyno, like Ctrl-C);
                                                 with {attach, tty?, rows?, cols?} and
                                                 `Upgrade: dynod-attach`, a one-off run.N:
                                                 101, then frames (api/frames.py)
    DELETE /v1/apps/APP/dynos[/NAME][?grace=S]   stop one dyno, or all of the app's (its
                                                 formation is scaled to 0 first)
    GET    /v1/apps/APP/formation ... POST /v1/apps/APP/actions/stop: the formation, ps:scale,
                                                 ps:wait, ps:restart, ps:stop (listed in
                                                 api/formation_endpoints.py)
    GET    /v1/logs[?app=&dyno=&tail=N&follow=1] Heroku-format lines, followed if asked
    GET    /v1/inspect[?app=APP|space=SPACE]     the live topology read from the kernel, and
                                                 every difference from the state (problems)
    GET    /v1/explain/daemon                    the commands the daemon's start-up did
    POST   /v1/traces                            one probe {from, to, protocol?, port?, wait?},
                                                 traced: an NDJSON line {"report": ...} or
                                                 {"error", "fix"}; closing it cancels the trace

Any request may add `?explain=1`: the answer then carries the commands that do what the daemon
did for it (api/explain.py says where).

Path segments are URL-decoded after the path is split, so a CIDR's slash travels as %2F. In the
bodies of the space, app and feature endpoints, a missing field, one of the wrong JSON type and an
unknown one are each a 400 that names the field. A dyno's `detach` must be a JSON boolean (missing
means true), and a root caller's `sudo_uid`/`sudo_gid` real IDs (0 means the daemon's
--dyno-user, never root). A body that is not JSON, or is nested too deeply, is a 400. A request
must arrive whole within 30 s of its first byte; an idle connection is closed after 300 s.

Errors are JSON `{"error": ..., "fix": ...}` with a 4xx/5xx status. Access is the socket file's:
root, and the `dynod` group when it exists.

This module is the HTTP layer; api/endpoints.py maps (method, path) to the services
(control/), api/requests.py turns each body into a typed request, api/streams.py holds the
streamed answers (foreground output, logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
import struct
import time
import urllib.parse
from typing import Any

import h11

from dynod.api import explain
from dynod.api.endpoints import Endpoints, Services
from dynod.api.wire import Answer, Request, Stream, Upgrade, parse_json
from dynod.errors import DynodError
from dynod.logs.book import LogBook

MAX_BODY = 1 << 20
IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may wait before its next request
REQUEST_TIMEOUT = 30.0  # seconds a request, once begun, has to arrive whole


class ApiServer:
    """HTTP/1.1 on the Unix socket: reads requests, hands them to the endpoints, sends the
    answers (JSON, or a chunked stream)."""

    def __init__(self, services: Services) -> None:
        self.endpoints = Endpoints(services)
        self._log: LogBook = services.log
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.idle_timeout = IDLE_TIMEOUT
        self.request_timeout = REQUEST_TIMEOUT

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
                if isinstance(answer, Upgrade):
                    await self._switch(conn, writer, reader, answer)
                    break
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
        """The next request, or None: the client closed, idled, or was too slow to send it (a
        connection never ties up the daemon for long)."""
        head: h11.Request | None = None
        body = b""
        too_large = False
        deadline: float | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if deadline is None and (head is not None or conn.trailing_data[0]):
                    deadline = time.monotonic() + self.request_timeout
                wait = self.idle_timeout if deadline is None else deadline - time.monotonic()
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for runs the read in a
                    # task of its own, twice per request
                    async with asyncio.timeout(max(wait, 0.0)):
                        data = await reader.read(65536)
                except TimeoutError:
                    return None
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                if len(body) + len(event.data) > MAX_BODY:
                    too_large = True  # the rest is read and dropped, so the answer is heard
                else:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert head is not None
        url = urllib.parse.urlsplit(head.target.decode("utf-8", "replace"))
        path = url.path.strip("/")
        parsed, body_error = parse_json(body)
        if too_large:
            parsed, body_error = (
                None,
                DynodError(
                    f"the request body is over {MAX_BODY >> 20} MiB",
                    "send less: no endpoint takes that much",
                    status=413,
                ),
            )
        return Request(
            head.method.decode(),
            # split before decoding (a %2F stays in its segment); an empty inner segment stays,
            # so /v1/apps//dynos is no endpoint rather than /v1/apps/dynos
            [urllib.parse.unquote(p) for p in path.split("/")] if path else [],
            dict(urllib.parse.parse_qsl(url.query)),
            parsed,
            uid,
            gid,
            body_error,
            _upgrade(head),
        )

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        answer: tuple[int, Any] | Stream,
    ) -> None:
        if isinstance(answer, Stream):
            await self._send_stream(conn, writer, reader, answer)
            return
        status, obj = answer
        payload = json.dumps(obj, indent=None).encode() + b"\n"
        headers = [("content-type", "application/json"), ("content-length", str(len(payload)))]
        # one write, so one send(2): the head, the body and the end
        head = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        data = conn.send(h11.Data(data=payload)) or b""
        end = conn.send(h11.EndOfMessage()) or b""
        writer.write(head + data + end)
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

    async def _switch(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        answer: Upgrade,
    ) -> None:
        """101, then the connection is the session's (no request or idle timeout: an attached
        shell may sit idle for hours; it ends with the dyno or the client)."""
        try:
            headers = [("connection", "Upgrade"), ("upgrade", answer.protocol)]
            writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
            await writer.drain()
        except BaseException:
            answer.refused()
            raise
        early, _ = conn.trailing_data
        await answer.session(reader, writer, bytes(early))

    async def _dispatch(self, request: Request) -> Answer:
        if request.body_error is not None:
            return request.body_error.status, request.body_error.to_json()
        if explain.wanted(request):
            return await explain.explained(lambda: self._answer(request))
        return await self._answer(request)

    async def _answer(self, request: Request) -> Answer:
        try:
            return await self.endpoints.route(request)
        except DynodError as exc:
            return exc.status, exc.to_json()
        except Exception as exc:  # noqa: BLE001 - the API never dies of one request
            self._log.emit(None, "dynod", f"error: {request.method} {request.path}: {exc!r}")
            return 500, {"error": f"internal error: {exc}", "fix": "see the daemon's log"}


def _upgrade(head: h11.Request) -> str:
    """The protocol a request asks to switch to: its Upgrade header, with Connection: upgrade."""
    connection = b",".join(v for k, v in head.headers if k == b"connection").lower()
    if b"upgrade" not in {t.strip() for t in connection.split(b",")}:
        return ""
    return b",".join(v for k, v in head.headers if k == b"upgrade").decode("latin-1").lower()


def socket_group(name: str) -> int | None:
    """The group whose members may use the API (`dynod`), when it exists."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
