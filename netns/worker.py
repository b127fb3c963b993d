"""The kernel thread: every netlink call and namespace switch runs on this one thread.

The event loop hands work over with `await worker.run(fn, ...)`, so it never blocks on the
kernel and never has its own thread moved into another namespace. One thread, one host-side
netlink socket, opened on that thread: netlink calls are serialized without locks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pyroute2 import IPRoute

from netns.rtnl import Rtnl

P = ParamSpec("P")
T = TypeVar("T")


class KernelWorker:
    def __init__(self, name: str = "kernel") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._local = threading.local()

    @property
    def ipr(self) -> IPRoute:
        """The host namespace's netlink socket; only valid on the worker thread."""
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("KernelWorker.ipr used outside the kernel thread")
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = IPRoute()
        return ipr

    @property
    def rtnl(self) -> Rtnl:
        """The host namespace's lean netlink socket (netns/rtnl.py) for the per-dyno calls;
        only valid on the worker thread."""
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("KernelWorker.rtnl used outside the kernel thread")
        rtnl = getattr(self._local, "rtnl", None)
        if rtnl is None:
            rtnl = self._local.rtnl = Rtnl()
        return rtnl

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn on the worker thread without blocking the event loop, in a copy of the
        caller's context: the recorder (netns/record.py) credits its commands to the caller."""
        context = contextvars.copy_context()

        def job() -> T:
            return context.run(fn, *args, **kwargs)

        return await asyncio.wrap_future(self._pool.submit(job))

    def close(self) -> None:
        def _close() -> None:
            ipr = getattr(self._local, "ipr", None)
            if ipr is not None:
                ipr.close()
                self._local.ipr = None
            rtnl = getattr(self._local, "rtnl", None)
            if rtnl is not None:
                rtnl.close()
                self._local.rtnl = None

        try:
            self._pool.submit(_close).result(timeout=5)
        finally:
            self._pool.shutdown(wait=True)
