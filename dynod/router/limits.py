"""The router's caps on resources: buffer sizes, grace periods, open files, and the admission of
client connections (a share per client address, a total the open file limit leaves room for)."""

from __future__ import annotations

import logging
import resource
import time

__all__ = [
    "CLOSE_GRACE",
    "DISCARD_LIMIT",
    "FD_RESERVE",
    "MAX_HEAD",
    "MAX_CLIENT_CONNECTIONS",
    "OPEN_FILES",
    "READ_SIZE",
    "Admission",
    "connection_limit",
    "raise_open_file_limit",
]

_logger = logging.getLogger(__name__)

READ_SIZE = 65536
# h11's max_incomplete_event_size: the longest head (request or response) the router takes.
MAX_HEAD = 16 * 1024
# How much of an unwanted request body (404, H14, ...) we read to keep the connection alive.
DISCARD_LIMIT = 1 << 20
# Upper bound for flushing our last bytes / reading the client's leftovers before closing.
CLOSE_GRACE = 1.0
# Connections one client address may hold at once (a browser opens 6 per host).
MAX_CLIENT_CONNECTIONS = 64
# Open files kept for everything but the router's connections: the API, DNS (its TCP
# connections and their upstream sockets), state, logs, namespaces, dynos' output files.
FD_RESERVE = 768
# The daemon's open file limit (`ulimit -n`), raised at start-up from systemd's default 1,024.
OPEN_FILES = 65536


def raise_open_file_limit(want: int = OPEN_FILES) -> int:
    """``ulimit -n WANT`` for the daemon (and ``ulimit -Hn WANT`` first when the hard limit is
    lower, as root may): every client connection costs the router two open files, and the API
    and DNS share the same table.  Never lowers a limit.  Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= want:
        return soft
    if hard != infinite and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):  # not root, or above fs.nr_open: as far as allowed
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def connection_limit() -> int:
    """How many client connections the open file limit leaves room for (two files each)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = OPEN_FILES
    return max(16, (soft - FD_RESERVE) // 2)


class Admission:
    """Counts the open client connections per address and refuses those over the caps."""

    def __init__(self) -> None:
        self._by_client: dict[str, int] = {}  # open connections per client address
        self._refused_at: dict[str, float] = {}  # when a refusal was last logged, per client

    def admit(self, client_ip: str, open_now: int, per_client: int, total: int | None) -> bool:
        """Count a new connection of `client_ip`, or refuse it: over the client's share
        (`per_client`), or over `total` (None: what the open file limit leaves room for, so
        the API stays usable)."""
        limit = total or connection_limit()
        held = self._by_client.get(client_ip, 0)
        if held < per_client and open_now < limit:
            self._by_client[client_ip] = held + 1
            return True
        self._warn(client_ip, held, per_client, open_now, limit)
        return False

    def release(self, client_ip: str) -> None:
        """One connection of `client_ip` has closed."""
        left = self._by_client[client_ip] - 1
        if left:
            self._by_client[client_ip] = left
        else:
            del self._by_client[client_ip]

    def _warn(self, client_ip: str, held: int, per_client: int, open_now: int, limit: int) -> None:
        now = time.monotonic()
        if now - self._refused_at.get(client_ip, -60.0) < 10:
            return  # one line per client per 10 s
        if len(self._refused_at) > 4096:
            self._refused_at.clear()
        self._refused_at[client_ip] = now
        _logger.warning(
            "router: refusing connections from %s: it holds %d (at most %d per client), "
            "%d in all (at most %d)",
            client_ip,
            held,
            per_client,
            open_now,
            limit,
        )
