"""The attach relay (api/attach.py) on the fake kernel side, over a socket pair standing for the
CLI's connection: stdin in, output and the exit status out, EOF, and a flooding dyno that the
daemon stops reading while the client does not read (no root)."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from dynod.api import attach, frames
from dynod.api.requests import RunRequest
from dynod.cli import oneoff
from dynod.control.dynos import DynoService
from dynod.errors import DynodError
from tests.unit.control.test_dynos import World, world  # noqa: F401 - the fixture
from tests.unit.control.worlds import until
from tests.unit.fake_daemon import FakeApi, cli
from tests.unit.fake_daemon import refused as refused_with


async def start(
    dynos: DynoService, command: str
) -> tuple[socket.socket, asyncio.Task[None], asyncio.StreamWriter]:
    """The one-off started and its relay running; the test's end of the connection, the relay,
    and the daemon's writer (what it holds for the client)."""
    request = RunRequest("sushi", command=command, cwd="/", attach=True, detach=False)
    dyno, ends = await dynos.run_attached(request, os.getuid(), os.getgid())
    upgrade = attach.session(dyno, ends, dynos)
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    relay = asyncio.get_running_loop().create_task(upgrade.session(reader, writer, b""))
    ours.setblocking(False)
    return ours, relay, writer


async def read_until_exit(sock: socket.socket) -> list[frames.Frame]:
    loop = asyncio.get_running_loop()
    decoder = frames.Decoder()
    seen: list[frames.Frame] = []
    while not seen or seen[-1].kind != frames.EXIT:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 20)
        assert data, f"the connection closed before the exit: {seen}"
        seen += decoder.feed(data)
    return seen


def test_stdin_reaches_the_dyno_and_its_output_and_status_come_back(world: World) -> None:  # noqa: F811
    async def test() -> None:
        sock, relay, _ = await start(
            world.dynos, "read a; echo out $a; echo err $a >&2; cat; exit 3"
        )
        loop = asyncio.get_running_loop()
        wire = frames.data(frames.STDIN, b"one\ntwo\n") + frames.encode(frames.EOF)
        await loop.sock_sendall(sock, wire)
        seen = await read_until_exit(sock)
        out = b"".join(f.payload for f in seen if f.kind == frames.STDOUT)
        err = b"".join(f.payload for f in seen if f.kind == frames.STDERR)
        assert (out, err) == (b"out one\ntwo\n", b"err one\n")
        assert frames.status_of(seen[-1]) == 3
        await asyncio.wait_for(relay, 20)
        await until(lambda: not world.state.dynos(), 20)
        assert [d.name for d in world.state.dynos()] == []
        sock.close()

    asyncio.run(test())


def test_a_flood_is_left_unread_while_the_client_reads_nothing(world: World) -> None:  # noqa: F811
    async def test() -> None:
        sock, relay, writer = await start(world.dynos, "exec yes")
        dyno = world.state.dynos()[0]
        # `yes` writes far more than a MiB in these seconds; what the daemon holds for the
        # client (past what the socket took) stays within a few read slices
        for _ in range(20):
            await asyncio.sleep(0.1)
            held = writer.transport.get_write_buffer_size()
            assert held < 4 * attach.READ_SIZE + (64 << 10), held
        assert world.state.dyno(dyno.id) is not None
        sock.close()  # the client goes away: the dyno is stopped
        await asyncio.wait_for(relay, 20)
        await until(lambda: world.state.dyno(dyno.id) is None, 20)

    asyncio.run(test())


def test_an_attach_request_without_the_upgrade_is_refused(run_api: FakeApi) -> None:
    body = json.dumps({"command": "bash", "attach": True}).encode()
    status, answer = run_api.request("POST", "/v1/apps/sushi/dynos", body)
    assert status == 400 and "Upgrade: dynod-attach" in answer["fix"], answer
    assert run_api.daemon.calls == []


def test_a_refused_upgrade_is_the_daemons_error_for_the_cli(run_api: FakeApi) -> None:
    body = {"command": "bash", "attach": True, "rows": -1}
    with pytest.raises(DynodError) as refused:
        oneoff._upgrade(run_api.path, "/v1/apps/sushi/dynos", body)
    assert "'rows'" in refused.value.problem and refused.value.status == 400
    assert run_api.daemon.calls == []


def test_a_one_off_needs_a_command() -> None:
    result = cli("run", "--app", "sushi")
    refused_with(result, "a one-off dyno needs a command")


def test_a_client_gone_mid_flood_leaves_no_pump_nor_watched_fd(world: World) -> None:  # noqa: F811
    """The client goes while the stdout pump writes to it (its drain fails, which ends the
    gather of the pumps with that error) and the stderr pump waits for output: the relay cancels
    that pump too, so no fd of the closed ends stays in the loop's selector, where a later
    relay's pipe on the same fd number would never be watched (`dynod run` hanging)."""

    async def test() -> None:
        request = RunRequest("sushi", command="exec yes", cwd="/", attach=True, detach=False)
        dyno, ends = await world.dynos.run_attached(request, os.getuid(), os.getgid())
        fds = [ends.stdout, ends.stderr]
        upgrade = attach.session(dyno, ends, world.dynos)
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs)
        loop = asyncio.get_running_loop()
        relay = loop.create_task(upgrade.session(reader, writer, b""))
        await until(lambda: writer.transport.get_write_buffer_size() > 0, 20)
        ours.close()
        await asyncio.wait_for(relay, 20)
        pumps = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_pump"]
        assert pumps == []
        watched = loop._selector.get_map()  # type: ignore[attr-defined]
        assert [fd for fd in fds if fd in watched] == []
        await until(lambda: world.state.dyno(dyno.id) is None, 20)

    asyncio.run(test())
