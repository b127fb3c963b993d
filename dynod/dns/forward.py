"""Forwarding of names outside localspace to the upstream resolvers (see dynod/dns/server.py).

UDP queries are sent from the thread that received them on non-blocking sockets, and are
then owned by one forwarder thread: it waits (poll) for the upstreams' replies and for the
deadlines, relays each reply to its asker through the listening socket the query came in on,
and answers SERVFAIL when no upstream answered in time.  So a slow or dead upstream costs the
thread that serves local names nothing but one sendto.

TCP queries are forwarded over TCP from the thread of their connection, blocking: that
thread serves one connection, whose queries are answered in order anyway.

Each upstream gets an equal share of `timeout`, in order, starting with the one that answered
last (a dead first upstream costs one share once, not on every query); SERVFAIL and REFUSED
from one upstream move on to the next at once.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import secrets
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dynod.dns.limits import ShareKey, Shares, Throttle
from dynod.dns.upstream import (
    Address,
    Track,
    ask_tcp,
    client_view,
    same_question,
    udp_socket,
    upstream,
)
from dynod.dns.wire import HEADER_LEN, REFUSED, SERVFAIL, Query, empty_reply

__all__ = ["Forwarder"]

# Sockets per address family that UDP queries leave from.  Each has its own random port, and
# each query a random ID, which makes forging an upstream's answer that much harder.
SOCKETS_PER_FAMILY = 8
READ_SIZE = 65535


@dataclass(slots=True, eq=False)
class _Pending:
    """A UDP query sent upstream, waiting for its answer."""

    uid: int  # the ID the upstreams see
    q: Query  # the client's query
    query: bytes  # as sent upstream: our ID, then the client's query
    reply_to: socket.socket  # the listening socket it came in on
    client: Address
    deadline: float
    order: list[int]  # indexes of the upstreams to try, in order
    share: ShareKey  # whose share of the queries in flight it takes
    attempt: int = 0


class Forwarder:
    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        timeout: float,
        shares: Shares,
        report: Throttle,
    ) -> None:
        self._upstreams = [upstream(host, port) for host, port in upstreams]
        self._timeout = timeout
        self._shares = shares  # of the queries in flight, by scope and source
        self._report = report
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int, int, int]] = []  # heap: (when, seq, id, attempt)
        self._seq = 0
        self._preferred = 0  # index of the upstream tried first: the last one that answered
        self._closed = False
        self.forwarded = 0
        self.servfail = 0
        self._sockets: dict[int, list[socket.socket]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        try:
            for family in {u.family for u in self._upstreams}:
                self._sockets[family] = [udp_socket(family) for _ in range(SOCKETS_PER_FAMILY)]
        except OSError:
            self._close_fds()
            raise
        if self._upstreams:
            self._thread = threading.Thread(target=self._run, name="dynod-dns-forward", daemon=True)
            self._thread.start()

    @property
    def inflight(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------------------- UDP

    def forward_udp(
        self, q: Query, reply_to: socket.socket, client: Address, share: ShareKey
    ) -> bytes | None:
        """Send `q` upstream; the answer goes to `client` later.  Returns an immediate reply
        instead when the query cannot be forwarded (SERVFAIL), also when `share` (the asker's
        scope and address) already has its share of the queries in flight."""
        if not self._upstreams or self._closed:
            self._count_servfail()
            return empty_reply(q, SERVFAIL)
        now = time.monotonic()
        with self._lock:
            pending = self._register(q, reply_to, client, now, share)
            wake = pending is not None and self._schedule(pending, now)
        if pending is None:  # the log is called with no lock held: it may be slow
            self._report(
                f"inflight {share[1]}",
                f"queries in flight from {share[1]} (or its network) over its share: SERVFAIL",
            )
            return empty_reply(q, SERVFAIL)
        self._send(pending)
        if wake:
            self._wake()
        return None

    def _register(
        self, q: Query, reply_to: socket.socket, client: Address, now: float, share: ShareKey
    ) -> _Pending | None:
        """A new pending query (lock held); None (counted as SERVFAIL) when too many are, in
        total or of its share."""
        if not self._shares.take(share):
            self.servfail += 1
            return None
        uid = self._new_id()
        pending = _Pending(
            uid=uid,
            q=q,
            query=uid.to_bytes(2, "big") + q.data[2:],
            reply_to=reply_to,
            client=client,
            deadline=now + self._timeout,
            order=self._order(),
            share=share,
        )
        self._pending[uid] = pending
        self.forwarded += 1
        return pending

    def _order(self) -> list[int]:
        n = len(self._upstreams)
        return [(self._preferred + i) % n for i in range(n)]

    def _new_id(self) -> int:
        # Random, not sequential, so that an off-path attacker cannot guess it; secrets rather
        # than random, whose Mersenne Twister can be predicted from the IDs it gave before.
        while True:
            uid = secrets.randbits(16)
            if uid not in self._pending:
                return uid

    def _schedule(self, pending: _Pending, now: float) -> bool:
        """Arm the deadline of the current attempt (lock held).  True if the forwarder thread
        must wake up to see it (it is now the earliest)."""
        share = self._timeout / len(self._upstreams)
        last = pending.attempt + 1 == len(pending.order)
        when = pending.deadline if last else min(now + share, pending.deadline)
        self._seq += 1
        heapq.heappush(self._deadlines, (when, self._seq, pending.uid, pending.attempt))
        if len(self._deadlines) > 4 * len(self._pending) + 1024:
            self._compact()
        return self._deadlines[0][1] == self._seq

    def _compact(self) -> None:
        """Drop the deadlines of queries already answered: at a high rate of forwarded queries
        the heap would otherwise hold `timeout` seconds' worth of them."""
        live = [
            entry
            for entry in self._deadlines
            if (p := self._pending.get(entry[2])) is not None and p.attempt == entry[3]
        ]
        heapq.heapify(live)
        self._deadlines = live

    def _send(self, pending: _Pending) -> None:
        target = self._upstreams[pending.order[pending.attempt]]
        sockets = self._sockets[target.family]
        try:
            sockets[secrets.randbelow(len(sockets))].sendto(pending.query, target.address)
        except OSError as exc:  # unreachable, buffer full: the deadline moves on to the next
            self._report(f"send {target.label}", f"cannot send to upstream {target.label}: {exc}")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe wakes the thread all the same
            os.write(self._wake_w, b"\0")

    def _count_servfail(self) -> None:
        with self._lock:
            self.servfail += 1

    # --------------------------------------------------------------- the forwarder thread

    def _run(self) -> None:
        poller = select.poll()  # not select(): it fails on descriptors above 1023
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {}
        for sockets in self._sockets.values():
            for sock in sockets:
                poller.register(sock.fileno(), select.POLLIN)
                by_fd[sock.fileno()] = sock
        while not self._closed:
            try:
                events = poller.poll(self._poll_timeout())
                for fd, _event in events:
                    if fd == self._wake_r:
                        os.read(self._wake_r, 4096)
                    else:
                        self._drain(by_fd[fd])
                self._expire(time.monotonic())
            except Exception as exc:  # one bad reply must not end forwarding
                if not self._closed:
                    self._report("forwarder", f"forwarder error: {exc!r}")

    def _poll_timeout(self) -> int | None:
        """Milliseconds until the earliest deadline (None: none pending)."""
        with self._lock:
            if not self._deadlines:
                return None
            when = self._deadlines[0][0]
        return max(0, int((when - time.monotonic()) * 1000) + 1)

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(256):  # then let the deadlines and the other sockets have a turn
            try:
                data, source = sock.recvfrom(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            self._on_reply(data, source)

    def _on_reply(self, data: bytes, source: Address) -> None:
        if len(data) < HEADER_LEN or not data[2] & 0x80:
            return
        uid = int.from_bytes(data[:2], "big")
        retry = None
        with self._lock:
            pending = self._pending.get(uid)
            if pending is None:
                return  # late (we already answered SERVFAIL), or a guess
            index = self._sender(pending, source)
            question = pending.q.data[HEADER_LEN : pending.q.question_end]
            if index is None or not same_question(data, question):
                return  # not from an upstream we asked, or not about our question: forged
            if data[3] & 0x0F in (SERVFAIL, REFUSED) and pending.attempt + 1 < len(pending.order):
                pending.attempt += 1
                self._schedule(pending, time.monotonic())
                retry = pending
            else:
                self._done(pending)
                self._preferred = index
        if retry is not None:
            self._send(retry)
            return
        reply = client_view(data, question, pending.q.data[:2])
        with contextlib.suppress(OSError):  # the asker's address is gone, or unlisten() ran
            pending.reply_to.sendto(reply, pending.client)

    def _done(self, pending: _Pending) -> None:
        """Forget an answered or failed query (lock held), giving back its share."""
        del self._pending[pending.uid]
        self._shares.release(pending.share)

    def _sender(self, pending: _Pending, source: Address) -> int | None:
        for index in pending.order[: pending.attempt + 1]:
            if self._upstreams[index].address[:2] == source[:2]:
                return index
        return None

    def _expire(self, now: float) -> None:
        resend: list[_Pending] = []
        failed: list[_Pending] = []
        silent: set[str] = set()
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _when, _seq, uid, attempt = heapq.heappop(self._deadlines)
                pending = self._pending.get(uid)
                if pending is None or pending.attempt != attempt:
                    continue  # answered, or already moved on
                silent.add(self._upstreams[pending.order[attempt]].label)
                if attempt + 1 < len(pending.order) and now < pending.deadline:
                    pending.attempt += 1
                    self._schedule(pending, now)
                    resend.append(pending)
                else:
                    self._done(pending)
                    self.servfail += 1
                    failed.append(pending)
        for label in silent:
            self._report(f"timeout {label}", f"upstream {label} did not answer in time")
        for pending in resend:
            self._send(pending)
        for pending in failed:
            with contextlib.suppress(OSError):
                pending.reply_to.sendto(empty_reply(pending.q, SERVFAIL), pending.client)

    # ------------------------------------------------------------------------------- TCP

    def forward_tcp(self, q: Query, track: Track) -> bytes:
        """The upstreams' answer to `q` over TCP, or SERVFAIL.  Blocks (up to `timeout`);
        `track(sock, True/False)` registers the upstream socket while it is in use, so that
        closing the server can shut it down (it returns False when the server is closing)."""
        deadline = time.monotonic() + self._timeout
        with self._lock:
            order = self._order() if self._upstreams else []
            self.forwarded += 1 if order else 0
        for i, index in enumerate(order):
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                break
            share = left / (len(order) - i)
            reply = ask_tcp(
                self._upstreams[index], q, time.monotonic() + share, track, self._report
            )
            if reply is None:
                continue
            if reply[3] & 0x0F in (SERVFAIL, REFUSED) and i + 1 < len(order):
                continue
            with self._lock:
                self._preferred = index
            return reply
        self._count_servfail()
        return empty_reply(q, SERVFAIL)

    # ------------------------------------------------------------------------------ close

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            self._pending.clear()
            self._deadlines.clear()
            self._shares.clear()
        self._close_fds()

    def _close_fds(self) -> None:
        for sockets in self._sockets.values():
            for sock in sockets:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
