"""A throwaway app for a test: created, configured and scaled from a Procfile, reached through
the router with the right Host header, destroyed at the end."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from dynod.api.client import Client, api_path
from dynod.rules import procfile
from dynod.rules.caller import inherited_env  # what `dynod ps:scale` passes on


def unique(stem: str) -> str:
    """`stem-1a2b3c`: a name no other test (or run) takes; stem cut to keep it valid."""
    return f"{stem[:20].rstrip('-')}-{secrets.token_hex(3)}"


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class TestApp:
    __test__ = False  # not a test class for pytest to collect

    client: Client
    name: str
    router_url: str
    directory: str
    space: str | None = None

    @property
    def host(self) -> str:
        return f"{self.name}.localhost"

    @property
    def dns_names(self) -> dict[str, str]:
        """{type: TYPE.APP.app.localspace} of its formation (DNS discovery, apps in a space)."""
        if not self.space:
            return {}
        return {p["type"]: f"{p['type']}.{self.name}.app.localspace" for p in self.formation()}

    def formation(self) -> list[dict[str, Any]]:
        return self.client.formation(self.name)

    def dynos(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.client.call("GET", api_path("dynos", app=self.name))
        return found

    def logs(self, lines: int = 1000) -> str:
        path = api_path("logs", app=self.name, tail=str(lines), follow="0")
        return b"".join(self.client.lines(path)).decode(errors="replace")

    def request(
        self, method: str, path: str, data: bytes | dict[str, str] | None = None
    ) -> Response:
        """Through the host's router with `Host: APP.localhost`; a dict is sent as a form."""
        body = urllib.parse.urlencode(data).encode() if isinstance(data, dict) else data
        request = urllib.request.Request(self.router_url + path, data=body, method=method)
        request.add_header("Host", self.host)
        if isinstance(data, dict):
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return Response(answer.status, answer.read(), dict(answer.headers))
        except urllib.error.HTTPError as error:
            return Response(error.code, error.read(), dict(error.headers))

    def get(self, path: str = "/") -> Response:
        return self.request("GET", path)

    def post(self, path: str, data: bytes | dict[str, str] | None = None) -> Response:
        return self.request("POST", path, data if data is not None else b"")

    def scale(self, formation: dict[str, int]) -> None:
        commands = procfile.read(self.directory)
        updates = [{"type": t, "quantity": n} for t, n in formation.items()]
        env = inherited_env()
        self.client.scale(self.name, updates, commands, self.directory, env)

    def run(self, command: str, timeout: float = 60) -> tuple[int | None, str]:
        """A one-off dyno running command (through /bin/sh -c): its exit status and output."""
        return one_off(self.client, self.name, command, self.directory, timeout)


def one_off(
    client: Client, app: str, command: str, cwd: str, timeout: float
) -> tuple[int | None, str]:
    """`dynod run --app APP --no-tty -- COMMAND` as a user types it: a one-off dyno run.N
    attached over pipes, stdin empty. Its exit status (None if it outlived `timeout`) and its
    output, stdout then stderr."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dynod", "--socket", client.socket_path]
            + ["run", "--app", app, "--no-tty", "--", command],
            input="",
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as late:
        return None, _text(late.stdout) + _text(late.stderr)
    return done.returncode, done.stdout + done.stderr


def _text(output: bytes | str | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
