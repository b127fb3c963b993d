"""The spawn thread and its own descriptor table (netns/spawner.py)."""

from __future__ import annotations

import contextvars
import fcntl
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from netns import spawner

MANY = 300  # descriptors the process holds besides the spawn thread's few

_said: contextvars.ContextVar[str] = contextvars.ContextVar("said", default="")


@pytest.fixture
def spawn_thread() -> Iterator[spawner.Spawner]:
    made = spawner.Spawner("test-spawn")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def many_descriptors() -> Iterator[list[int]]:
    fds = []
    for _ in range(MANY):  # from 512 up: apart from what a starting program opens itself
        opened = os.open("/dev/null", os.O_RDONLY)
        fds.append(fcntl.fcntl(opened, fcntl.F_DUPFD, 512))  # inheritable: only the copy decides
        os.close(opened)
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _table(task: int) -> set[int]:
    return {int(n) for n in os.listdir(f"/proc/self/task/{task}/fd")}


def test_the_spawn_thread_has_a_table_of_its_own_with_0_to_2_only(
    spawn_thread: spawner.Spawner, many_descriptors: list[int]
) -> None:
    task = spawn_thread.thread_id()
    assert task != os.getpid()
    assert _table(task) <= {0, 1, 2}  # a thread sharing the process's would list 300 more
    assert set(many_descriptors) <= _table(os.getpid())  # the process's is whole


def test_a_child_of_the_spawn_thread_copies_its_few_descriptors_not_the_process_s(
    spawn_thread: spawner.Spawner, many_descriptors: list[int]
) -> None:
    """Even with close_fds off and the process's descriptors inheritable: the child's table
    is a copy of the spawn thread's."""

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "30"], close_fds=False)

    child = spawn_thread.call(start)
    try:
        held = {int(n) for n in os.listdir(f"/proc/{child.pid}/fd")}
        assert not set(many_descriptors) & held, held  # (sleep may be opening a file of its own)
        assert len(held) < 10, held
    finally:
        child.kill()
        child.wait()


def test_a_borrowed_descriptor_is_the_process_s_open_file_and_is_closed_after(
    spawn_thread: spawner.Spawner,
) -> None:
    read_end, write_end = os.pipe()
    try:

        def write_through() -> tuple[int, set[int]]:
            with spawner.borrowed([write_end]) as (local,):
                os.write(local, b"through the spawn thread's own table")
                return local, _table(spawn_thread_task)

        spawn_thread_task = spawn_thread.thread_id()
        local, during = spawn_thread.call(write_through)
        assert local in during
        assert os.read(read_end, 100) == b"through the spawn thread's own table"
        assert _table(spawn_thread_task) <= {0, 1, 2}  # the copy is gone again
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_job_runs_in_the_caller_s_context_and_its_error_comes_back(
    spawn_thread: spawner.Spawner,
) -> None:
    _said.set("the caller's")
    assert spawn_thread.call(_said.get) == "the caller's"

    def refuse() -> None:
        raise FileNotFoundError("no such program")

    with pytest.raises(FileNotFoundError, match="no such program"):
        spawn_thread.call(refuse)
    assert spawn_thread.call(lambda: 7) == 7  # the thread goes on after an error


def test_the_signal_wakeup_descriptor_is_kept_so_a_signal_caught_there_wakes_the_loop(
    many_descriptors: list[int],
) -> None:
    """A signal may be delivered to the spawn thread; Python's C handler then writes the
    signal's number to the wake-up descriptor's number in that thread's table (an asyncio
    loop's self-pipe): it must be the same socket there, or the loop never hears of it."""
    loop_end, handler_end = socket.socketpair()
    handler_end.setblocking(False)
    loop_end.settimeout(5)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    old_wakeup = signal.set_wakeup_fd(handler_end.fileno())
    made = None
    try:
        assert spawner.signal_wakeup_fd() == handler_end.fileno()
        made = spawner.Spawner("test-spawn", keep=spawner.signal_wakeup_fd())
        task = made.thread_id()
        assert _table(task) <= {0, 1, 2, handler_end.fileno()}
        signal.pthread_kill(made.call(threading.get_ident), signal.SIGUSR1)
        assert loop_end.recv(1) == bytes([signal.SIGUSR1])
    finally:
        if made is not None:
            made.close()
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGUSR1, previous)
        loop_end.close()
        handler_end.close()


def test_the_wakeup_descriptor_is_not_guessed_off_the_main_thread() -> None:
    """Only the main thread can read it: elsewhere a -1 would close the loop's socket in the
    spawn thread's table, so it is refused."""
    raised: list[BaseException] = []

    def read() -> None:
        try:
            spawner.signal_wakeup_fd()
        except RuntimeError as exc:
            raised.append(exc)

    worker = threading.Thread(target=read)
    worker.start()
    worker.join()
    assert len(raised) == 1 and "main thread" in str(raised[0])
