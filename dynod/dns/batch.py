"""Datagrams in batches: `recvmmsg(2)` and `sendmmsg(2)` on a UDP socket, through ctypes (the
standard library has no binding for them), so one system call moves up to BATCH datagrams.

Why: a query costs two system calls with recvfrom/sendto, and each Python socket call also
gives up and takes back the GIL; on a VM with the CPU bug mitigations on, that entry and exit is
a good part of the whole cost of an answer. Under load many queries wait in the socket's queue,
so one recvmmsg takes them all, and one sendmmsg sends all their answers.

Every buffer is allocated once (about 200 kB per listening address): BATCH slots of
RECEIVE_SLOT bytes to receive into and of SEND_SLOT bytes to send from, the
senders' addresses (sockaddr_in, 16 bytes each), and the message headers pointing at them. The
header arrays are plain bytearrays written through memoryviews of 64-bit words, so filling one
is an item assignment, not a ctypes attribute. Layouts are x86-64 / aarch64 Linux (LP64):

    struct iovec   { void *base; size_t len; }                              16 bytes
    struct msghdr  { void *name; socklen_t namelen; struct iovec *iov; size_t iovlen;
                     void *control; size_t controllen; int flags; }         56 bytes
    struct mmsghdr { struct msghdr hdr; unsigned int len; }                 64 bytes
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from dynod.dns.wire import EDNS_UDP_LIMIT

__all__ = ["BATCH", "RECEIVE_SLOT", "SEND_SLOT", "Batch", "supported"]

BATCH = 64  # datagrams per system call: what 64 queries in flight need
# A query is a few dozen bytes (a few hundred with EDNS padding); a bigger one is cut, then
# refused with FORMERR.  An answer over UDP is at most EDNS_UDP_LIMIT (1232) bytes; a bigger
# reply (none is made) would be sent alone.
RECEIVE_SLOT = 2048
SEND_SLOT = EDNS_UDP_LIMIT
MSG_WAITFORONE = 0x10000  # block for the first datagram only, then take what is queued
ADDRESS = 16  # sizeof(struct sockaddr_in)
IOVEC = 16
MMSGHDR = 64
WORDS = MMSGHDR // 8  # 64-bit words per header

_libc = ctypes.CDLL(None, use_errno=True)  # CDLL releases the GIL while the call blocks
# No argtypes: the calls are made with small ints (the fd, counts, flags) and c_void_p objects
# made once, which ctypes passes as they are; argtypes would convert every argument of every
# call (a good part of a microsecond per call).
_recvmmsg = _libc.recvmmsg
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.restype = ctypes.c_int


def supported() -> bool:
    """The layouts above hold (a 64-bit Linux)."""
    return ctypes.sizeof(ctypes.c_void_p) == 8 and os.uname().sysname == "Linux"


def _address_of(buffer: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class Batch:
    """The buffers of one UDP socket's batches; used by one thread only."""

    def __init__(self, sock: socket.socket, size: int = BATCH) -> None:
        self.fd = sock.fileno()
        self.size = size
        self.received = bytearray(size * RECEIVE_SLOT)
        self.addresses = bytearray(size * ADDRESS)
        self.outgoing = bytearray(size * SEND_SLOT)
        self._recv_iov = bytearray(size * IOVEC)
        self._recv_hdr = bytearray(size * MMSGHDR)
        self._send_iov = bytearray(size * IOVEC)
        self._send_hdr = bytearray(size * MMSGHDR)
        self.received_view = memoryview(self.received)
        self.outgoing_view = memoryview(self.outgoing)
        # msg_len of header i is 32-bit word 16 i + 14; the sender's IPv4 address (network
        # order, read as a native int: a dict key) is 32-bit word 4 i + 1 of the addresses
        self.lengths = memoryview(self._recv_hdr).cast("I")
        self.sources = memoryview(self.addresses).cast("I")
        self._send_words = memoryview(self._send_hdr).cast("Q")
        self._send_iov_words = memoryview(self._send_iov).cast("Q")
        self._addresses_at = _address_of(self.addresses)
        self._recv_hdr_at = _address_of(self._recv_hdr)
        self._send_hdr_at = _address_of(self._send_hdr)
        received_at, outgoing_at = _address_of(self.received), _address_of(self.outgoing)
        recv_iov_at, send_iov_at = _address_of(self._recv_iov), _address_of(self._send_iov)
        recv_iov_words = memoryview(self._recv_iov).cast("Q")
        recv_words = memoryview(self._recv_hdr).cast("Q")
        for i in range(size):
            recv_iov_words[2 * i] = received_at + i * RECEIVE_SLOT
            recv_iov_words[2 * i + 1] = RECEIVE_SLOT
            self._send_iov_words[2 * i] = outgoing_at + i * SEND_SLOT
            at = WORDS * i  # msg_name, msg_namelen, msg_iov, msg_iovlen
            recv_words[at], recv_words[at + 1] = self._addresses_at + i * ADDRESS, ADDRESS
            recv_words[at + 2], recv_words[at + 3] = recv_iov_at + i * IOVEC, 1
            self._send_words[at + 1] = ADDRESS
            self._send_words[at + 2], self._send_words[at + 3] = send_iov_at + i * IOVEC, 1
        self.pending = 0  # replies queued by put() since the last send()
        self._recv_hdr_ptr = ctypes.c_void_p(self._recv_hdr_at)
        self._send_hdr_ptr = ctypes.c_void_p(self._send_hdr_at)

    def receive(self) -> int:
        """Block until at least one datagram is queued, then take up to `size`: their count.
        OSError on failure. A shut-down socket gives one empty datagram from nowhere."""
        # (msg_namelen needs no reset: the kernel writes back 16 for every IPv4 sender)
        count = _recvmmsg(self.fd, self._recv_hdr_ptr, self.size, MSG_WAITFORONE, None)
        if count < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        return count

    def datagram(self, i: int) -> bytes:
        """The i-th datagram received."""
        start = i * RECEIVE_SLOT
        return self.received_view[start : start + self.lengths[16 * i + 14]].tobytes()

    def sender(self, i: int) -> tuple[str, int]:
        """Who sent the i-th datagram, as socket.recvfrom says it."""
        at = i * ADDRESS
        port: int = struct.unpack_from("!H", self.addresses, at + 2)[0]
        return socket.inet_ntoa(self.addresses[at + 4 : at + 8]), port

    def put(self, reply: bytes, i: int) -> bool:
        """Queue `reply` to the sender of the i-th datagram; False if it does not fit a slot
        (the caller sends it alone)."""
        size = len(reply)
        if size > SEND_SLOT:
            return False
        j = self.pending
        start = j * SEND_SLOT
        self.outgoing_view[start : start + size] = reply
        self._send_iov_words[2 * j + 1] = size
        self._send_words[WORDS * j] = self._addresses_at + i * ADDRESS
        self.pending = j + 1
        return True

    def send(self) -> list[OSError]:
        """Send every queued reply; the errors of those the kernel refused (each is skipped)."""
        errors: list[OSError] = []
        done, total = 0, self.pending
        self.pending = 0
        while done < total:
            at = (
                self._send_hdr_ptr
                if not done
                else ctypes.c_void_p(self._send_hdr_at + done * MMSGHDR)
            )
            sent = _sendmmsg(self.fd, at, total - done, 0)
            if sent < 0:
                error = ctypes.get_errno()
                errors.append(OSError(error, os.strerror(error)))
                sent = 1  # that one is lost, like a failed sendto
            done += sent
        return errors
