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
    POST   /v1/apps                              create an app {name, space?, internal_routing?}:
                                                 201, it
    GET    /v1/apps/APP                          one of them
    DELETE /v1/apps/APP                          destroy an app, stopping its dynos:
                                                 {"stopped": [dyno names]}
    GET    /v1/apps/APP/features                 [{name, enabled, description}]
    PUT    /v1/apps/APP/features/FEATURE         {enabled}: {name, enabled, note}
    GET    /v1/dynos[?app=APP]                   dynos, with memory_mb and memory_quota_mb
    POST   /v1/apps/APP/dynos                    start a dyno {type, command, cwd, env, detach,
                                                 size}:
                                                 with detach, 201 and the dyno; without, an NDJSON
                                                 stream {"dyno": ...}, {"line": ...}..., {"exit": N}
                                                 (closing it stops the dyno, like Ctrl-C)
    DELETE /v1/apps/APP/dynos[/NAME][?grace=S]   stop one dyno, or all of the app's
    GET    /v1/logs[?app=&dyno=&tail=N&follow=1] Heroku-format lines, followed if asked

Path segments are URL-decoded after the path is split, so a CIDR's slash travels as %2F. In the
bodies of the space, app and feature endpoints, a missing field, one of the wrong JSON type and an
unknown one are each a 400 that names the field. A dyno's `detach` must be a JSON boolean (missing
means true), and a root caller's `sudo_uid`/`sudo_gid` real IDs (0 means the daemon's
--dyno-user, never root). A body that is not JSON, or is nested too deeply, is a 400. A request
must arrive whole within 30 s of its first byte; an idle connection is closed after 300 s.

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
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11

from dynod.api.requests import RunRequest
from dynod.errors import DynodError, NotFound
from dynod.logs.book import FOREGROUND_WINDOW, LogBook, LogLine, OutputFile, shared_puncher
from dynod.state.store import Dyno, State

if TYPE_CHECKING:
    from dynod.daemon import Daemon

MAX_BODY = 1 << 20
MAX_SECONDS = 86_400  # a grace period or a tail longer than a day is a typo
IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may wait before its next request
REQUEST_TIMEOUT = 30.0  # seconds a request, once begun, has to arrive whole
OUTPUT_POLL = 0.05  # seconds between looks at a foreground dyno's output
OUTPUT_SLICE = 16 << 10  # bytes of it turned into lines before the event loop is let go


@dataclass
class Request:
    method: str
    path: list[str]
    query: dict[str, str]
    body: Any
    uid: int
    gid: int
    body_error: DynodError | None = None  # the body could not be read as JSON: why


@dataclass
class Stream:
    """A streamed answer; `closed` is set when the client goes away."""

    content_type: str
    chunks: Callable[[asyncio.Event], AsyncIterator[bytes]]
    on_close: Callable[[], None] | None = None


Answer = tuple[int, Any] | Stream
Handler = Callable[..., Awaitable[Answer]]


class ApiServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._table = self._routes()
        self.idle_timeout = IDLE_TIMEOUT
        self.request_timeout = REQUEST_TIMEOUT

    # The daemon builds these before it listens (issue 8 makes them plain constructor
    # arguments); a request that came earlier is told to wait.
    @property
    def _state(self) -> State:
        if self.daemon.state is None:
            raise DynodError("the daemon is still starting", "try again in a moment", 503)
        return self.daemon.state

    @property
    def _log(self) -> LogBook:
        if self.daemon.log is None:
            raise DynodError("the daemon is still starting", "try again in a moment", 503)
        return self.daemon.log

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
                    data = await asyncio.wait_for(reader.read(65536), max(wait, 0.0))
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
        parsed, body_error = _parse_json(body)
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
        if request.body_error is not None:
            return request.body_error.status, request.body_error.to_json()
        try:
            return await self._route(request)
        except DynodError as exc:
            return exc.status, exc.to_json()
        except Exception as exc:  # noqa: BLE001 - the API never dies of one request
            self._log.emit(None, "dynod", f"error: {request.method} {request.path}: {exc!r}")
            return 500, {"error": f"internal error: {exc}", "fix": "see the daemon's log"}

    # ---------------------------------------------------------------- routes
    def _routes(self) -> list[tuple[str, tuple[str, ...], Handler]]:
        """(method, path after /v1, handler); each `*` segment is passed to the handler."""
        return [
            ("GET", ("status",), self._status),
            ("GET", ("spaces",), self._spaces),
            ("POST", ("spaces",), self._create_space),
            ("GET", ("spaces", "*"), self._space),
            ("DELETE", ("spaces", "*"), self._destroy_space),
            ("GET", ("spaces", "*", "trusted-ips"), self._trusted_ips),
            ("POST", ("spaces", "*", "trusted-ips"), self._add_trusted_ip),
            ("DELETE", ("spaces", "*", "trusted-ips", "*"), self._remove_trusted_ip),
            ("GET", ("apps",), self._apps),
            ("POST", ("apps",), self._create_app),
            ("GET", ("apps", "*"), self._app),
            ("DELETE", ("apps", "*"), self._destroy_app),
            ("GET", ("apps", "*", "features"), self._features),
            ("PUT", ("apps", "*", "features", "*"), self._set_feature),
            ("POST", ("apps", "*", "dynos"), self._run),
            ("DELETE", ("apps", "*", "dynos"), self._stop),
            ("DELETE", ("apps", "*", "dynos", "*"), self._stop),
            ("GET", ("dynos",), self._dynos),
            ("GET", ("logs",), self._logs),
        ]

    async def _route(self, r: Request) -> Answer:
        endpoint = f"/{'/'.join(r.path)}"
        if r.path[:1] != ["v1"]:
            raise NotFound(f"no such endpoint {endpoint}", "see the API list in api.py")
        allowed: list[str] = []
        for method, pattern, handler in self._table:
            args = _match(pattern, r.path[1:])
            if args is None:
                continue
            if method == r.method:
                return await handler(r, *args)
            allowed.append(method)
        if allowed:
            raise DynodError(
                f"{endpoint} does not take {r.method}",
                f"it takes {' or '.join(allowed)}; see the API list in api.py",
                status=405,
            )
        raise NotFound(f"no such endpoint {r.method} {endpoint}", "see the API list in api.py")

    async def _status(self, r: Request) -> Answer:
        return 200, self.daemon.status()

    async def _spaces(self, r: Request) -> Answer:
        return 200, await self.daemon.spaces_info()

    async def _create_space(self, r: Request) -> Answer:
        body = _fields(r, "name", "cidr", "nat_ip")
        space = await self.daemon.create_space(
            _text(body, "name"),
            _optional_text(body, "cidr"),
            _optional_text(body, "nat_ip"),
        )
        return 201, space

    async def _space(self, r: Request, space: str) -> Answer:
        for entry in await self.daemon.spaces_info():
            if entry["name"] == space:
                return 200, entry
        raise NotFound(f"no space named {space!r}", "`dynod spaces` lists the spaces")

    async def _destroy_space(self, r: Request, space: str) -> Answer:
        await self.daemon.destroy_space(space)
        return 200, {"destroyed": space}

    async def _trusted_ips(self, r: Request, space: str) -> Answer:
        return 200, await self.daemon.trusted_ips(space)

    async def _add_trusted_ip(self, r: Request, space: str) -> Answer:
        body = _fields(r, "cidr")
        return 201, await self.daemon.add_trusted_ip(space, _text(body, "cidr"))

    async def _remove_trusted_ip(self, r: Request, space: str, cidr: str) -> Answer:
        return 200, await self.daemon.remove_trusted_ip(space, cidr)

    async def _apps(self, r: Request) -> Answer:
        return 200, await self.daemon.apps_info()

    async def _create_app(self, r: Request) -> Answer:
        body = _fields(r, "name", "space", "internal_routing")
        app = await self.daemon.create_app(
            _text(body, "name"),
            _optional_text(body, "space"),
            _flag(body, "internal_routing"),
        )
        return 201, app

    async def _app(self, r: Request, app: str) -> Answer:
        for entry in await self.daemon.apps_info():
            if entry["name"] == app:
                return 200, entry
        raise NotFound(f"no app named {app!r}", "`dynod apps` lists the apps")

    async def _destroy_app(self, r: Request, app: str) -> Answer:
        return 200, await self.daemon.destroy_app(app)

    async def _features(self, r: Request, app: str) -> Answer:
        return 200, await self.daemon.features(app)

    async def _set_feature(self, r: Request, app: str, feature: str) -> Answer:
        body = _fields(r, "enabled")
        enabled = _flag(body, "enabled", required=True)
        return 200, await self.daemon.set_feature(app, feature, enabled)

    async def _dynos(self, r: Request) -> Answer:
        app = r.query.get("app")
        dynos = self.daemon.app_dynos(app) if app else self._state.dynos()
        return 200, [d.to_json() | self.daemon.memory(d) for d in dynos]

    async def _run(self, r: Request, app: str) -> Answer:
        body = dict(_fields(r, *RUN_FIELDS))
        if "detach" in body:  # missing means detached; anything but a JSON boolean is refused
            _flag(body, "detach", required=True)
        for key in ("type", "command", "cwd", "size"):
            if body.get(key) is not None:
                _text(body, key)
        _string_map(body, "env")
        dyno = await self.daemon.run_dyno(RunRequest.parse(app, body), r.uid, r.gid)
        if dyno.detached:
            return 201, dyno.to_json() | self.daemon.timings.get(dyno.id, {})
        return self._foreground(dyno)

    def _foreground(self, dyno: Dyno) -> Stream:
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
        exit_wait = asyncio.ensure_future(self.daemon.wait_exit(dyno))

        def batch(lines: list[str], final: bool = False) -> bytes:
            dropped, skipped = reader.dropped, reader.skipped
            report = reader.overflow(final=final)
            # One message per slice: encoding a list is one C call, a message per line is not.
            out = _ndjson({"lines": lines}) if lines else b""
            if report:
                notice = {"line": report, "dropped": dropped, "skipped_bytes": skipped}
                out += _ndjson(notice)
            return out

        async def chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
            yield _ndjson({"dyno": dyno.to_json()})
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
                        yield _ndjson({"exit": exit_wait.result()})
                        return
                    await asyncio.wait({exit_wait, gone}, timeout=OUTPUT_POLL)
            finally:
                gone.cancel()

        def on_close() -> None:
            reader.close()
            if not exit_wait.done() and self._state.dyno(dyno.id) is not None:
                # The client went away before the process ended (the CLI was killed, or
                # Ctrl-C): the dyno goes too.
                self.daemon.background(self.daemon.stop_dyno(dyno))
            exit_wait.cancel()

        return Stream("application/x-ndjson", chunks, on_close)

    async def _stop(self, r: Request, app: str, dyno: str | None = None) -> Answer:
        grace = _float(r.query.get("grace"))
        dynos = [self.daemon.find(app, dyno)] if dyno else self.daemon.app_dynos(app)
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
        log = self._log

        def wanted(line: LogLine) -> bool:
            if app and line.app != app:
                return False
            return not dyno_name or line.source.endswith(f"[{dyno_name}]") or line.dyno == dyno_name

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


def _parse_json(body: bytes) -> tuple[Any, DynodError | None]:
    """The body as JSON (an empty body is {}), or the reason it is not."""
    if not body:
        return {}, None
    try:
        return json.loads(body, parse_constant=_not_json), None
    except RecursionError:  # "[[[[...": Python's parser recurses once per level
        return None, DynodError(
            "the request body is JSON nested too deeply",
            "send a JSON object with the endpoint's fields, nested a few levels at most",
        )
    except ValueError:
        return None, DynodError("the request body is not JSON", "send a JSON object")


def _not_json(word: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such numbers."""
    raise ValueError(f"{word} is not JSON")


def _match(pattern: tuple[str, ...], path: list[str]) -> list[str] | None:
    """The `*` segments of `path` if it fits `pattern`, else None. `*` takes a non-empty one."""
    if len(pattern) != len(path):
        return None
    args: list[str] = []
    for want, got in zip(pattern, path, strict=True):
        if want == "*":
            if not got:
                return None
            args.append(got)
        elif want != got:
            return None
    return args


def _fields(r: Request, *known: str) -> dict[str, Any]:
    """The request's body: a JSON object with no fields but `known`."""
    listed = ", ".join(known)
    if not isinstance(r.body, dict):
        raise DynodError(
            f"the request body is JSON {_json_type(r.body)}, not an object",
            f"send a JSON object with the fields {listed}",
        )
    unknown = sorted(set(r.body) - set(known))
    if unknown:
        raise DynodError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}",
            f"this endpoint's fields are {listed}",
        )
    return r.body


# What `dynod run` sends; anything else is refused, as on every other endpoint.
RUN_FIELDS = ("type", "command", "cwd", "env", "detach", "size", "sudo_uid", "sudo_gid")


def _string_map(body: dict[str, Any], key: str) -> None:
    """A field that, when given, is a JSON object of strings (the dyno's environment)."""
    value = body.get(key)
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DynodError(
            f"the field {key!r} must be a JSON object of strings, and it is "
            f"{json.dumps(value)[:200]}",
            f'send it as {{"{key}": {{"NAME": "value"}}}}',
        )


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    """A string field that may be missing or null."""
    return None if body.get(key) is None else _text(body, key)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in body else f"JSON {_json_type(value)}"
        raise DynodError(
            f"the field {key!r} must be a string, and it is {got}",
            f'send it as a string, e.g. {{"{key}": "..."}}',
        )
    return value


def _flag(body: dict[str, Any], key: str, required: bool = False) -> bool:
    """A true/false field; when not required, missing or null is false."""
    value = body.get(key)
    if value is None and not required:
        return False
    if not isinstance(value, bool):
        got = "missing" if key not in body else f"JSON {_json_type(value)} {json.dumps(value)}"
        raise DynodError(
            f"the field {key!r} must be true or false, and it is {got}",
            f'send {{"{key}": true}} or {{"{key}": false}}',
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    named: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return named.get(type(value), type(value).__name__)


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _float(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise DynodError(f"not a number: {value!r}", "give seconds, e.g. ?grace=5") from None
    if not 0 <= number <= MAX_SECONDS:  # also refuses nan and infinity
        raise DynodError(
            f"not a usable number of seconds: {value!r}", f"give a number from 0 to {MAX_SECONDS}"
        )
    return number
