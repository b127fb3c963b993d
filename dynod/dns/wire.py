"""DNS wire format for dynod's DNS server: reading queries, building replies (`dynod.dns.zone`
prepares the answers of a zone in advance).

Nothing here touches a socket; `dynod.dns.server` explains the design and does the I/O.  Offsets and
bit masks below refer to the layout of RFC 1035 section 4.1:

    offset 0   ID (2 bytes)         the asker's transaction id, copied into the reply
           2   flags (2 bytes)      QR|OPCODE(4)|AA|TC|RD  then  RA|Z|AD|CD|RCODE(4)
           4   QDCOUNT ANCOUNT NSCOUNT ARCOUNT (2 bytes each)
          12   question: QNAME (length-prefixed labels, ending with a 0 byte), QTYPE, QCLASS
               then the answer, authority and additional records

dnslib builds the pieces that never change (the layout of an A record, the SOA, the OPT
record); the per-query work is slicing and concatenating bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dnslib

# Record types, classes and response codes used here (RFC 1035, 3596, 6891)
A, NS, SOA, AAAA, OPT, ANY = 1, 2, 6, 28, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # an extended rcode: its upper 8 bits travel in the OPT record's TTL field

HEADER_LEN = 12
# Without EDNS a UDP reply may be 512 bytes at most (RFC 1035).  With EDNS the asker advertises
# what it can take; we cap it at 1232, the size that crosses any IPv6 path without fragmenting
# (the DNS flag day 2020 value), because fragmented UDP is lost or spoofable.
PLAIN_UDP_LIMIT = 512
EDNS_UDP_LIMIT = 1232
TCP_LIMIT = 65535  # TCP messages carry a 2-byte length prefix
MAX_NAME_LEN = 255

# The zone we answer for: its apex in wire form (a label of 10 bytes, then the root label).
APEX = b"\x0alocalspace\x00"
# The name server of the zone (its NS record); in each scope it resolves to the scope's bridge
# address, where this server listens for that scope's dynos.
NS_NAME = "ns.localspace"

QD1 = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QDCOUNT=1, ANCOUNT=NSCOUNT=ARCOUNT=0


class BadQuery(Exception):
    """A query that gets an error reply without even a question in it: FORMERR or NOTIMP."""

    def __init__(self, rcode: int) -> None:
        super().__init__(rcode)
        self.rcode = rcode


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. `data[12:question_end]` is the question exactly as asked (its case
    included: resolvers that randomise the case of names, "0x20", check that it comes back)."""

    data: bytes
    qname: bytes  # wire form, lowercased: b"\x03web\x05sushi\x03app\x0alocalspace\x00"
    qtype: int
    qclass: int
    question_end: int
    local: bool  # qname is localspace. or a name below it
    edns_size: int | None  # the UDP payload size the asker advertised; None without an OPT
    edns_do: bool
    edns_version: int


def parse_query(data: bytes) -> Query | None:
    """Read a query. None: not worth an answer (no complete header, or the packet is itself a
    response: answering responses lets two servers bounce packets at each other forever).
    Raises BadQuery for FORMERR / NOTIMP."""
    if len(data) < HEADER_LEN or data[2] & 0x80:
        return None
    if data[2] & 0x78:  # OPCODE: only QUERY (0); NOTIFY, UPDATE, ... are not implemented
        raise BadQuery(NOTIMP)
    qdcount, ancount, nscount, arcount = struct.unpack_from("!4H", data, 4)
    if qdcount != 1 or ancount or nscount or arcount > 1:
        raise BadQuery(FORMERR)
    qname_end, last_label = _walk_name(data)
    question_end = qname_end + 4
    if question_end > len(data):
        raise BadQuery(FORMERR)
    qtype, qclass = struct.unpack_from("!HH", data, qname_end)
    if arcount:
        size, do, version = _read_opt(data, question_end)
    elif question_end == len(data):
        size, do, version = None, False, 0
    else:
        raise BadQuery(FORMERR)  # bytes after the question that no count accounts for
    return Query(
        data=data,
        qname=data[HEADER_LEN:qname_end].lower(),
        qtype=qtype,
        qclass=qclass,
        question_end=question_end,
        local=data[last_label:qname_end].lower() == APEX,
        edns_size=size,
        edns_do=do,
        edns_version=version,
    )


def _walk_name(data: bytes) -> tuple[int, int]:
    """Walk the question's labels: (offset after the name, offset of its last label)."""
    pos = last = HEADER_LEN
    end = len(data)
    while True:
        if pos >= end:
            raise BadQuery(FORMERR)  # the name runs past the packet
        length = data[pos]
        if length == 0:
            break
        # Lengths 64..255 are compression pointers (0xC0) or obsolete label types.  A pointer in
        # the first name of a message can only aim at the header or at itself (a loop), so no
        # honest client sends one: refusing them makes loops impossible by construction.
        if length > 63:
            raise BadQuery(FORMERR)
        last = pos
        pos += 1 + length
    pos += 1  # the root label
    if pos - HEADER_LEN > MAX_NAME_LEN:
        raise BadQuery(FORMERR)
    return pos, last


def _read_opt(data: bytes, pos: int) -> tuple[int, bool, int]:
    """The OPT record at `pos` (RFC 6891) as (size, DO bit, version).  FORMERR if the only
    additional record is anything else (we understand no other), is cut short, or is followed
    by stray bytes."""
    if len(data) < pos + 11 or data[pos] != 0:  # the OPT's owner is the root name
        raise BadQuery(FORMERR)
    rtype, size, _ext_rcode, version, flags, rdlen = struct.unpack_from("!HHBBHH", data, pos + 1)
    if rtype != OPT or pos + 11 + rdlen != len(data):
        raise BadQuery(FORMERR)
    return size, bool(flags & 0x8000), version


def udp_limit(q: Query) -> int:
    """How big a UDP reply to this query may be.  An advertised size below 512 counts as 512
    (RFC 6891 section 6.2.5)."""
    if q.edns_size is None:
        return PLAIN_UDP_LIMIT
    return max(PLAIN_UDP_LIMIT, min(q.edns_size, EDNS_UDP_LIMIT))


# ------------------------------------------------------------------------------------ replies


def reply_flags(query_flags: bytes, rcode: int, *, aa: bool, tc: bool = False) -> bytes:
    """Reply flags: QR set, OPCODE and RD echoed, RA set (we recurse, by forwarding), CD echoed
    (RFC 6840 5.9), AD clear (nothing here is DNSSEC-validated)."""
    high = 0x80 | (query_flags[0] & 0x79) | (0x04 if aa else 0) | (0x02 if tc else 0)
    return bytes((high, 0x80 | (query_flags[1] & 0x10) | (rcode & 0x0F)))


def error_reply(data: bytes, rcode: int) -> bytes:
    """A header-only reply (no question: it may be what could not be read).  Never larger than
    the packet it answers, so garbage sent with a forged source address cannot be amplified."""
    return data[:2] + reply_flags(data[2:4], rcode, aa=False) + b"\x00" * 8


def opt_for(q: Query, rcode: int = NOERROR) -> bytes:
    """Our OPT record if the query had one (RFC 6891: only then), with the DO bit echoed (RFC
    3225) and the upper bits of an extended rcode."""
    if q.edns_size is None:
        return b""
    return _OPT_RECORDS[(q.edns_do, rcode >> 4)]


def reply(q: Query, rcode: int, body: bytes, *, aa: bool, tc: bool, an: int, ns: int) -> bytes:
    opt = opt_for(q, rcode)
    counts = struct.pack("!4H", 1, an, ns, 1 if opt else 0)
    flags = reply_flags(q.data[2:4], rcode, aa=aa, tc=tc)
    return q.data[:2] + flags + counts + q.data[HEADER_LEN : q.question_end] + body + opt


def empty_reply(q: Query, rcode: int) -> bytes:
    """The question with no records: SERVFAIL, REFUSED, BADVERS."""
    return reply(q, rcode, b"", aa=False, tc=False, an=0, ns=0)


# ------------------------------------------------------------------ records built by dnslib


class _NoCompression(dnslib.DNSBuffer):
    """A buffer that writes names in full, so that a record packed alone can be pasted into any
    message (a compression pointer would be an offset into the message it was packed in)."""

    def encode_name(self, name: dnslib.DNSLabel | str) -> None:
        self.encode_name_nocompress(name)


def _a_record_prefix() -> bytes:
    """Everything of one of our A records but the address, as dnslib packs it after a question:
    the owner name as a compression pointer to the question's name (0xC00C: offset 12), type A,
    class IN, TTL 0, RDLENGTH 4.  Every A record we send is this plus 4 address bytes: 16 bytes,
    where spelling out the name would take up to 265."""
    msg = dnslib.DNSRecord.question("x.localspace", "A")
    msg.add_answer(dnslib.RR("x.localspace", dnslib.QTYPE.A, ttl=0, rdata=dnslib.A("0.0.0.0")))
    record = bytes(msg.pack())[-16:]
    if record[:2] != b"\xc0\x0c":
        raise RuntimeError(f"dnslib packed an unexpected A record: {record.hex()}")
    return record[:12]


def _soa_record() -> bytes:
    """The SOA of localspace., in authority sections of NXDOMAIN / no-data replies.  TTL 0 and
    MINIMUM 0 so that resolvers cache the negative answer for 0 seconds (RFC 2308): a dyno that
    is about to start must be resolvable the moment it registers."""
    rdata = dnslib.SOA("localspace.", "hostmaster.localspace.", (1, 3600, 600, 86400, 0))
    buffer = _NoCompression()
    dnslib.RR("localspace.", dnslib.QTYPE.SOA, ttl=0, rdata=rdata).pack(buffer)
    return bytes(buffer.data)


def _ns_record() -> bytes:
    """The NS of localspace.: ns.localspace., TTL 0 like every record we serve."""
    buffer = _NoCompression()
    rdata = dnslib.NS(NS_NAME + ".")
    dnslib.RR("localspace.", dnslib.QTYPE.NS, ttl=0, rdata=rdata).pack(buffer)
    return bytes(buffer.data)


def _opt_record(do: bool, ext_rcode: int) -> bytes:
    """Our OPT record: the UDP size we accept, EDNS version 0, the DO bit echoed."""
    buffer = dnslib.DNSBuffer()
    record = dnslib.EDNS0(udp_len=EDNS_UDP_LIMIT, ext_rcode=ext_rcode, flags="do" if do else "")
    record.pack(buffer)
    return bytes(buffer.data)


A_PREFIX = _a_record_prefix()
RECORD_LEN = len(A_PREFIX) + 4
SOA_RECORD = _soa_record()
NS_RECORD = _ns_record()
_OPT_RECORDS = {(do, ext): _opt_record(do, ext) for do in (False, True) for ext in (0, 1)}
