"""The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket, with the stdlib."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any, Protocol

from dynod.errors import DynodError


class DaemonUnavailable(DynodError):
    pass


def api_path(*segments: str, **query: str | None) -> str:
    """'/v1/...', each segment quoted whole; queries that are None are left out.

    api_path("spaces", "acme", "trusted-ips", "10.0.0.0/8")
        == "/v1/spaces/acme/trusted-ips/10.0.0.0%2F8"
    """
    path = "/v1/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
    given = {k: v for k, v in query.items() if v is not None}
    return path + ("?" + urllib.parse.urlencode(given) if given else "")


class ExplainSink(Protocol):
    """Where a client asking for explanations (`?explain=1`, api/explain.py) hands them."""

    def add(self, commands: list[str]) -> None:
        """The commands of a JSON answer (or of an error)."""

    def streamed(self, commands: list[str]) -> None:
        """The commands of a streamed answer, as soon as they arrive (its first line)."""


def _explaining(path: str) -> str:
    return path + ("&" if "?" in path else "?") + "explain=1"


def connect(socket_path: str, timeout: float | None = None) -> socket.socket:
    """A connection to the daemon's socket; DaemonUnavailable, with what to do, if none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if timeout is not None:
        sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise DaemonUnavailable(
            f"the dynod daemon is not running (nothing answers on {socket_path})",
            "start it with `sudo dynod daemon` (or `systemctl start dynod`)",
            status=503,
        ) from None
    except PermissionError:
        sock.close()
        raise DaemonUnavailable(
            f"permission denied on {socket_path}",
            "run the command with sudo, or add yourself to the dynod group",
            status=403,
        ) from None
    return sock


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect(self._path, self.timeout)


class Client:
    def __init__(
        self, socket_path: str, timeout: float | None = None, explain: ExplainSink | None = None
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.explain = explain  # given: every request asks for the commands it made

    def _open(self, method: str, path: str, body: Any = None) -> http.client.HTTPResponse:
        conn = _UnixConnection(self.socket_path, self.timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        return conn.getresponse()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if self.explain is not None:
            path = _explaining(path)
        response = self._open(method, path, body)
        data = response.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = {"error": data.decode(errors="replace")}
        if self.explain is not None and isinstance(parsed, dict) and "explain" in parsed:
            self.explain.add(parsed.pop("explain"))
            if response.status < 400:
                parsed = parsed.get("answer")
        if response.status >= 400:
            problem = parsed.get("error", "error") if isinstance(parsed, dict) else str(parsed)
            fix = parsed.get("fix", "") if isinstance(parsed, dict) else ""
            raise DynodError(problem, fix, status=response.status)
        return parsed

    def lines(self, path: str, method: str = "GET", body: Any = None) -> Iterator[bytes]:
        """A streamed answer, line by line (chunked transfer is undone by http.client)."""
        if self.explain is not None:
            path = _explaining(path)
        response = self._open(method, path, body)
        if response.status >= 400:
            data = json.loads(response.read() or b"{}")
            if self.explain is not None and "explain" in data:
                self.explain.add(data["explain"])
            raise DynodError(data.get("error", "error"), data.get("fix", ""), response.status)
        first = self.explain is not None
        while True:
            line = response.readline()
            if not line:
                return
            if first and self.explain is not None:
                first = False
                message = json.loads(line)
                if isinstance(message, dict) and "explain" in message:
                    self.explain.streamed(message["explain"])
                    continue
            yield line

    # ---------------------------------------------------------------- formations (issue 9)
    def formation(self, app: str) -> list[dict[str, Any]]:
        """The app's process types: [{"type", "command", "quantity", "size"}]."""
        result: list[dict[str, Any]] = self.call("GET", api_path("apps", app, "formation"))
        return result

    def formations(self) -> dict[str, list[dict[str, Any]]]:
        """Every app's process types, by app, in one call."""
        result: dict[str, list[dict[str, Any]]] = self.call("GET", api_path("formation"))
        return result

    def scale(
        self,
        app: str,
        updates: list[dict[str, Any]],
        commands: dict[str, str],
        cwd: str,
        env: dict[str, str] | None = None,
        sudo: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """ps:scale: updates are {"type", "quantity" or "delta", "size"?}; commands the
        Procfile's, read from cwd. Returns the new formation once it has converged."""
        body: dict[str, Any] = {"updates": updates, "commands": commands, "cwd": cwd}
        if env:
            body["env"] = env
        if sudo is not None:
            body["sudo_uid"], body["sudo_gid"] = sudo
        result: list[dict[str, Any]] = self.call("PATCH", api_path("apps", app, "formation"), body)
        return result

    def wait(self, app: str, timeout: float) -> dict[str, Any]:
        """ps:wait: {"ready": true, "dynos"} or {"ready": false, "problem", "dyno", "log"}."""
        path = api_path("apps", app, "formation", "wait", timeout=f"{timeout:g}")
        result: dict[str, Any] = self.call("GET", path)
        return result

    def restart(self, app: str, target: str | None = None) -> list[str]:
        """ps:restart of a dyno (web.1), a type (web) or the whole app: the names restarted."""
        body = {"target": target}
        names: list[str] = self.call("POST", api_path("apps", app, "actions", "restart"), body)[
            "restarted"
        ]
        return names

    def stop_dynos(self, app: str, target: str) -> dict[str, list[str]]:
        """ps:stop of a dyno or a type: {"stopped": [...], "replaced": [...]} (the formation
        starts its own dynos again)."""
        result: dict[str, list[str]] = self.call(
            "POST", api_path("apps", app, "actions", "stop"), {"target": target}
        )
        return result
