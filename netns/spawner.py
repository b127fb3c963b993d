"""The spawn thread: programs are started from a thread with a descriptor table of its own.

A child gets a copy of the descriptor table of the thread that starts it (vfork as fork: the
`dup_fd` of clone(2) without CLONE_FILES), and a close-on-exec descriptor is closed only after
that copy (by the child's close_range(2), or by execve), each closed one flushed. The daemon
keeps two descriptors per dyno (its pidfd, its output file): with 4,000 dynos every start
copied and closed 8,000 of them before the daemon got its thread back (0.7 ms at the first
dyno, 5 ms at the 4,000th). A thread may unshare its table (`unshare(CLONE_FILES)`) and close
everything but 0-2 in its copy: the children it starts then copy a handful, however many the
process holds.

What the spawn thread opens is in its table only, and the process's descriptors are not: a
number means nothing from one table to the other. So the jobs run here take paths and values,
and the descriptors they need from the process are `borrowed` (pidfd_getfd(2): a duplicate of
the process's descriptor in this thread's table, the same open file, closed after the job).
Nothing opened here may be handed to another thread.

Two numbers of the process's do reach this thread unasked, and are provided for: the signal
wake-up descriptor (a signal may be delivered to any thread, and Python's C handler writes its
number to that descriptor from the thread that caught it: the thread keeps that one open file at
that number, `keep`), and a descriptor closed by a finalizer (an object collected by the cyclic
garbage collector is finalized on whichever thread's allocation set the collection off: none is
collected during a job here, gc.disable()).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import gc
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import ParamSpec, TypeVar

from netns import _libc

P = ParamSpec("P")
T = TypeVar("T")


def own_table(keep: int = -1) -> None:
    """For the calling thread: `unshare(CLONE_FILES)`, then close_range(3, ~0U) in the new
    table, which is the thread's alone (the process's other threads keep theirs whole); the
    process's descriptor `keep` (> 2), if any, stays, the same open file at the same number."""
    _libc.unshare(_libc.CLONE_FILES)
    if keep > 2:
        _libc.close_range(3, keep - 1)
        _libc.close_range(keep + 1)
    else:
        _libc.close_range(3)


def signal_wakeup_fd() -> int:
    """The descriptor Python's signal handler writes each caught signal's number to (an asyncio
    loop's, once it has a signal handler), or -1; readable on the main thread only (elsewhere
    RuntimeError: a guessed -1 would leave the spawn thread without the loop's socket).
    There is no getter: it is set to -1 and back, two calls in which a signal would wake no
    loop; made at the daemon's start, before it serves anything."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the signal wake-up descriptor is read on the main thread only")
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd)
    return fd


@contextlib.contextmanager
def borrowed(fds: Sequence[int]) -> Iterator[list[int]]:
    """Duplicates in the calling thread's table of the process's descriptors `fds` (in the
    same order; the same open files), for a thread with a table of its own; closed after."""
    local: list[int] = []
    pidfd = os.pidfd_open(os.getpid())  # the first thread's, whose table is the process's
    try:
        for fd in fds:
            local.append(_libc.pidfd_getfd(pidfd, fd))
        yield local
    finally:
        for fd in [*local, pidfd]:
            with contextlib.suppress(OSError):
                os.close(fd)


class Spawner:
    """One thread with its own, nearly empty, descriptor table (own_table), running jobs one
    at a time; made before it is needed, at no cost while it waits."""

    def __init__(self, name: str = "spawn", keep: int = -1) -> None:
        """Starts the thread now (from the thread that makes it, whose namespaces it is born
        in: the host's), so a refused table is an error at once, not at the first spawn. keep:
        a descriptor of the process's that the thread keeps (signal_wakeup_fd())."""
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=own_table, initargs=(keep,)
        )
        try:
            self._pool.submit(int).result()
        except concurrent.futures.BrokenExecutor:
            self._pool.shutdown(wait=True)
            raise OSError(
                "the spawn thread could not get a descriptor table of its own "
                "(unshare(CLONE_FILES) and close_range(2) need Linux 5.9 or later)"
            ) from None

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn on the spawn thread and wait for it, in a copy of the caller's context (the
        recorder, netns/record.py, credits its commands to the caller). From a worker thread:
        it blocks."""
        context = contextvars.copy_context()

        def job() -> T:
            collecting = gc.isenabled()
            gc.disable()  # no finalizer of the process's objects runs on this table
            try:
                return context.run(fn, *args, **kwargs)
            finally:
                if collecting:
                    gc.enable()

        return self._pool.submit(job).result()

    def thread_id(self) -> int:
        """The spawn thread's id (`ls /proc/self/task/TID/fd` lists its table)."""
        return self.call(threading.get_native_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
