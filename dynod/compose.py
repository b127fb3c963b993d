"""The composition root: builds the daemon and its API and runs them until SIGINT/SIGTERM.

The API knows the daemon; the daemon does not know the API (it is handed the API's listen()),
so the two do not import each other."""

from __future__ import annotations

import asyncio
import signal
import sys

from dynod.api.server import ApiServer
from dynod.config import Config
from dynod.daemon import Daemon
from dynod.router.proxy import raise_open_file_limit


async def serve(config: Config) -> None:
    """`dynod daemon`: start, wait for SIGINT or SIGTERM, shut down."""
    # The kernel thread and the event loop hand the GIL to each other many times per dyno;
    # Python's default 5 ms switch interval would add up to that much to every handoff.
    sys.setswitchinterval(0.0005)
    raise_open_file_limit()  # systemd's default soft limit, 1,024, is too few (issue 7)
    daemon = Daemon(config)
    api = ApiServer(daemon)
    stop = asyncio.Event()
    # Handlers first: a SIGTERM during start-up still ends in shutdown(), which removes
    # whatever start-up had made by then.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start(lambda: api.start(config.socket, daemon.socket_group()))
    except BaseException:
        await _close(api, daemon, stop_dynos=False)
        raise
    try:
        await stop.wait()
    finally:
        await _close(api, daemon, stop_dynos=True)


async def _close(api: ApiServer, daemon: Daemon, stop_dynos: bool) -> None:
    """The API first: no new request while the dynos stop."""
    await api.close()
    await daemon.shutdown(stop_dynos=stop_dynos)
