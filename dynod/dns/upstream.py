"""The upstream resolvers: their addresses, the sockets queries leave from, the checks a reply
must pass (our ID, an upstream we asked, our question), and asking one of them over TCP."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynod.dns.wire import HEADER_LEN, Query
from dynod.errors import DynodError

__all__ = [
    "Address",
    "Report",
    "Track",
    "Upstream",
    "ask_tcp",
    "client_view",
    "read_exact",
    "same_question",
    "udp_socket",
    "upstream",
]

Address = Any  # a socket address as the socket module gives it: (host, port[, flow, scope])
Track = Callable[[socket.socket, bool], bool]
Report = Callable[[str, str], None]  # (kind, text): a Throttle


@dataclass(frozen=True, slots=True)
class Upstream:
    family: int
    address: Address
    label: str  # "10.0.0.2:53", for logs


def upstream(host: str, port: int) -> Upstream:
    """An upstream resolver given as an IP address (v4 or v6, with a %zone for link-local)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise DynodError(
            f"upstream DNS server {host!r} is not an IP address ({exc})",
            "give upstream resolvers as IP addresses, e.g. --upstream 1.1.1.1",
        ) from exc
    family, _type, _proto, _name, address = infos[0]
    label = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    return Upstream(family, address, label)


def read_exact(sock: socket.socket, size: int, until: float) -> bytes | None:
    """`size` bytes from a stream socket by time.monotonic() `until`; None on EOF or timeout."""
    chunks: list[bytes] = []
    while size:
        left = until - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(size)
        except TimeoutError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def ask_tcp(target: Upstream, q: Query, until: float, track: Track, report: Report) -> bytes | None:
    """The answer of one upstream to `q` over TCP (with the client's ID), None if none came
    by time.monotonic() `until`. `track` as for Forwarder.forward_tcp."""
    question = q.data[HEADER_LEN : q.question_end]
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    if not track(sock, True):  # the listener is stopping
        sock.close()
        return None
    try:
        sock.settimeout(max(until - time.monotonic(), 0.001))
        sock.connect(target.address)
        sock.sendall(len(q.data).to_bytes(2, "big") + q.data)
        head = read_exact(sock, 2, until)
        reply = read_exact(sock, int.from_bytes(head, "big"), until) if head else None
    except OSError as exc:
        report(f"tcp {target.label}", f"upstream {target.label} over TCP: {exc}")
        return None
    finally:
        track(sock, False)
        sock.close()
    if reply is None:
        report(f"tcp {target.label}", f"upstream {target.label} over TCP: no answer")
        return None
    if len(reply) < HEADER_LEN or reply[:2] != q.data[:2] or not reply[2] & 0x80:
        return None
    if not same_question(reply, question):
        return None
    return client_view(reply, question, q.data[:2])


def udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # room for bursts of replies (capped by rmem_max)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def same_question(reply: bytes, question: bytes) -> bool:
    """Whether a reply is about `question` (case aside: some servers do not keep it).  A reply
    without a question (FORMERR from the upstream) is taken: its ID and source matched."""
    qdcount = reply[4:6]
    if qdcount == b"\x00\x00":
        return True
    end = HEADER_LEN + len(question)
    return qdcount == b"\x00\x01" and reply[HEADER_LEN:end].lower() == question.lower()


def client_view(reply: bytes, question: bytes, client_id: bytes) -> bytes:
    """The upstream's reply with the client's ID and the client's question back in (its exact
    case: 0x20 checking resolvers compare it)."""
    if reply[4:6] == b"\x00\x00":
        return client_id + reply[2:]  # no question to restore
    end = HEADER_LEN + len(question)
    return client_id + reply[2:HEADER_LEN] + question + reply[end:]
