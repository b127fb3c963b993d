"""`?explain=1` (api/explain.py) through the real API server and the CLI's `--explain`
(cli/explain.py), over a fake daemon whose work reports commands as the kernel layer does:
on the kernel thread, through the recorder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynod.api.explain import attach
from dynod.api.wire import Stream
from dynod.cli.explain import HEADER, NOTHING
from dynod.errors import DynodError
from netns import record
from netns.worker import KernelWorker
from tests.unit.conftest import serving
from tests.unit.fake_daemon import FakeApi, FakeDaemon


class KernelDaemon(FakeDaemon):
    """Creating a space runs two commands' worth of work on a kernel thread; trusting a range
    does one and is then refused."""

    def __init__(self) -> None:
        super().__init__()
        self.worker = KernelWorker("test-explain")

    async def create_space(self, name: str, cidr: str | None, nat_ip: str | None) -> dict:
        await self.worker.run(record.note, "ip", "link", "add", f"br-{name}", "type", "bridge")
        await self.worker.run(record.note_text, "nft -f - <<'NFT'\nadd table inet t\nNFT")
        return await super().create_space(name, cidr, nat_ip)

    async def add_trusted_ip(self, space: str, cidr: str) -> list[str]:
        await self.worker.run(record.note, "nft", "add", "element", "inet", "t", "x")
        raise DynodError("refused after some work", "try again")


@pytest.fixture
def kapi(tmp_path: Path) -> Iterator[FakeApi]:
    daemon = KernelDaemon()
    try:
        with serving(daemon, tmp_path) as fake:
            yield fake
    finally:
        daemon.worker.close()


def test_an_answer_carries_its_commands_only_when_asked(kapi: FakeApi) -> None:
    body = json.dumps({"name": "acme"}).encode()
    status, plain = kapi.request("POST", "/v1/spaces", body)
    assert status == 201 and plain["name"] == "acme" and "explain" not in plain
    status, explained = kapi.request(
        "POST", "/v1/spaces?explain=1", json.dumps({"name": "beta"}).encode()
    )
    assert status == 201
    assert explained["answer"]["name"] == "beta"
    assert explained["explain"] == [
        "ip link add br-beta type bridge",
        "nft -f - <<'NFT'\nadd table inet t\nNFT",
    ]


def test_an_error_keeps_its_shape_and_says_what_was_done(kapi: FakeApi) -> None:
    kapi.request("POST", "/v1/spaces", json.dumps({"name": "acme"}).encode())
    status, answer = kapi.request(
        "POST", "/v1/spaces/acme/trusted-ips?explain=1", json.dumps({"cidr": "10.0.0.0/8"}).encode()
    )
    assert status == 400
    assert answer["error"] == "refused after some work"
    assert answer["explain"] == ["nft add element inet t x"]


def test_the_cli_prints_the_commands_after_its_output(kapi: FakeApi) -> None:
    result = kapi.cli("spaces:create", "acme", "--explain")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("created space acme")
    assert lines[1:] == [
        HEADER,
        "ip link add br-acme type bridge",
        "nft -f - <<'NFT'",
        "add table inet t",
        "NFT",
    ]
    plain = kapi.cli("spaces:create", "beta")
    assert HEADER not in plain.stdout


def test_the_cli_prints_the_commands_of_a_refusal_then_the_error(kapi: FakeApi) -> None:
    kapi.cli("spaces:create", "acme")
    result = kapi.cli("trusted-ips:add", "10.0.0.0/8", "--space", "acme", "--explain")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [HEADER, "nft add element inet t x"]
    assert "error: refused after some work" in result.stderr


def test_a_command_that_changed_nothing_says_so(kapi: FakeApi) -> None:
    kapi.cli("apps:create", "sushi")
    result = kapi.cli("apps:destroy", "sushi", "--explain")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == NOTHING


def test_explain_daemon_prints_what_start_up_did(kapi: FakeApi) -> None:
    startup = kapi.server.endpoints.startup  # type: ignore[attr-defined]
    with record.recording(startup):
        record.note("ip", "link", "add", "dynod0", "type", "bridge")
    result = kapi.cli("explain", "daemon")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [HEADER, "ip link add dynod0 type bridge"]


def test_a_stream_starts_with_its_commands() -> None:
    async def chunks(closed: Any) -> Any:
        yield b'{"dyno": {}}\n'

    stream = attach(Stream("application/x-ndjson", chunks), ["ip netns add x"])
    assert isinstance(stream, Stream)

    async def collect() -> list[bytes]:
        return [c async for c in stream.chunks(None)]  # type: ignore[arg-type]

    assert asyncio.run(collect()) == [b'{"explain": ["ip netns add x"]}\n', b'{"dyno": {}}\n']
