"""The recorder (netns/record.py): commands in the order they were performed, only while someone
listens, credited to the request whose context performed them (also on the kernel thread)."""

from __future__ import annotations

import asyncio

import pytest

from netns import cgroup, record
from netns import exec as netns_exec
from netns.worker import KernelWorker


def test_commands_come_in_the_order_they_were_performed() -> None:
    with record.recording() as rec:
        record.note("ip", "netns", "add", "a")
        record.note("ip", "link", "set", "b", "up")
        record.note_text("echo 1 > /x")
    assert rec.commands() == ["ip netns add a", "ip link set b up", "echo 1 > /x"]


def test_nothing_is_kept_without_a_listener_nor_after_the_block() -> None:
    assert not record.active()
    record.note("ip", "netns", "add", "nobody-listens")
    with record.recording() as rec:
        assert record.active()
    record.note("ip", "netns", "add", "too-late")
    rec.add("added to a closed recording")
    assert rec.commands() == []
    assert not record.active()


def test_words_are_quoted_for_the_shell() -> None:
    with record.recording() as rec:
        record.note("sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647")
    assert rec.commands() == ["sysctl -w 'net.ipv4.ping_group_range=0 2147483647'"]


def test_commands_inside_a_namespace_name_it() -> None:
    with record.recording() as rec:
        with record.inside("dynod-sushi.web.1"):
            record.note("ip", "addr", "add", "172.16.0.6/30", "dev", "eth0")
            record.note("sysctl", "-w", "net.ipv4.ping_group_range=0 1")
            record.note_text("# a comment is not run anywhere")
        record.note("ip", "link", "set", "dynod0", "up")
    assert rec.commands() == [
        "ip -n dynod-sushi.web.1 addr add 172.16.0.6/30 dev eth0",
        "ip netns exec dynod-sushi.web.1 sysctl -w 'net.ipv4.ping_group_range=0 1'",
        "# a comment is not run anywhere",
        "ip link set dynod0 up",
    ]


def test_a_recording_is_bounded_and_says_what_it_left_out() -> None:
    rec = record.Recording(max_commands=2, max_chars=1000)
    with record.recording(rec):
        for n in range(5):
            record.note("ip", "netns", "add", f"n{n}")
    assert rec.commands() == [
        "ip netns add n0",
        "ip netns add n1",
        "# ... and 3 more commands, not kept",
    ]
    big = record.Recording(max_commands=100, max_chars=20)
    with record.recording(big):
        record.note_text("x" * 15)
        record.note_text("y" * 15)
    assert big.commands() == ["x" * 15, "# ... and 1 more commands, not kept"]


def test_a_here_document_holds_the_text_exactly() -> None:
    assert record.here_document("nft -f -", "add table inet t", "NFT") == (
        "nft -f - <<'NFT'\nadd table inet t\nNFT"
    )
    with pytest.raises(ValueError, match="NFT"):
        record.here_document("nft -f -", "a\nNFT\nb", "NFT")


def test_cgroup_writes_are_reported_as_echo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "pids.max"
    with record.recording() as rec:
        cgroup._write(str(target), "256")
    assert target.read_text() == "256"
    assert rec.commands() == [f"echo 256 > {target}"]


def test_a_spawn_is_shown_as_one_shell_line() -> None:
    line = netns_exec.as_typed(
        "ns1",
        ["/bin/sh", "-c", 'exec "$@"', "x", "sleep", "1"],
        {"cwd": "/", "env": {"PATH": "/bin"}, "start_new_session": True},
        "</dev/null >>/out 2>&1",
    )
    assert line == (
        "(cd / && exec env -i PATH=/bin setsid -f ip netns exec ns1 /bin/sh -c "
        "'exec \"$@\"' x sleep 1) </dev/null >>/out 2>&1"
    )


def test_two_concurrent_requests_each_get_only_their_own_commands() -> None:
    """Both requests are in flight at once and hand their work to the one kernel thread in
    turns: each recording holds its own commands, in its own order, and nothing of the other's
    nor of work done outside any request."""
    worker = KernelWorker("test-record")
    both_started = asyncio.Event()

    async def request(name: str, started: list[str]) -> list[str]:
        with record.recording() as rec:
            await worker.run(record.note, "ip", "netns", "add", name)
            started.append(name)
            if len(started) == 2:
                both_started.set()
            await both_started.wait()  # the other request has done work meanwhile
            for n in range(3):
                await worker.run(record.note, "ip", "link", "set", f"{name}-{n}", "up")
                await asyncio.sleep(0)
        return rec.commands()

    async def outside() -> None:
        await worker.run(record.note, "ip", "netns", "add", "no-request")

    async def main() -> tuple[list[str], list[str]]:
        started: list[str] = []
        a, b, _ = await asyncio.gather(request("a", started), request("b", started), outside())
        return a, b

    try:
        a, b = asyncio.run(main())
    finally:
        worker.close()
    for name, got in (("a", a), ("b", b)):
        assert got == [f"ip netns add {name}"] + [f"ip link set {name}-{n} up" for n in range(3)]


def test_tasks_a_request_starts_report_to_it_until_it_ends() -> None:
    """A task started by the request (the supervisor's launch) is credited to it; what such a
    task does after the request answered (a later restart) is not."""

    async def main() -> list[str]:
        release = asyncio.Event()
        with record.recording() as rec:

            async def background() -> None:
                record.note("ip", "netns", "add", "during")
                await release.wait()
                record.note("ip", "netns", "add", "after")

            task = asyncio.get_running_loop().create_task(background())
            await asyncio.sleep(0)
        release.set()
        await task
        return rec.commands()

    assert asyncio.run(main()) == ["ip netns add during"]


def test_a_deleted_flow_is_shown_as_conntrack_would_take_it() -> None:
    from types import SimpleNamespace

    from netns.conntrack import _delete_words

    flow = SimpleNamespace(proto=6, saddr="172.16.0.6", daddr="10.0.0.1", sport=4000, dport=80)
    assert _delete_words(flow) == [
        "conntrack", "-D", "-p", "tcp", "-s", "172.16.0.6", "-d", "10.0.0.1",
        "--sport", "4000", "--dport", "80",
    ]  # fmt: skip
