"""What one scope serves: its names with their answers prepared in advance (the UDP hot path is
one dict lookup), and the answer to any other query for a name below localspace."""

from __future__ import annotations

import functools
import itertools
import socket
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from dynod.dns.wire import (
    A_PREFIX,
    AAAA,
    ANY,
    APEX,
    HEADER_LEN,
    IN,
    MAX_NAME_LEN,
    NOERROR,
    NS,
    NS_RECORD,
    NXDOMAIN,
    PLAIN_UDP_LIMIT,
    QD1,
    RECORD_LEN,
    REFUSED,
    SOA,
    SOA_RECORD,
    A,
    Query,
    empty_reply,
    opt_for,
    reply,
    reply_flags,
)

__all__ = [
    "EMPTY_ZONE",
    "Name",
    "Prepared",
    "Zone",
    "build_zone",
    "encode_name",
    "local_reply",
    "remember_negative",
]

# A prepared UDP answer: (flags and counts, the answer section of each rotation, the turn
# counter).  The reply is: the asker's ID + flags and counts + the question as asked + one
# answer section.
Prepared = tuple[bytes, Sequence[bytes], Iterator[int]]
# What goes into one: (TC, ANCOUNT, NSCOUNT, the sections, the turn counter)
_Section = tuple[bool, int, int, Sequence[bytes], Iterator[int]]


class Name:
    """One name of a scope with its answers prepared: the work of a query is then a lookup."""

    __slots__ = ("wire", "source", "count", "records", "turn", "prepared")

    def __init__(self, wire: bytes, source: tuple[str, ...], turn: Iterator[int]) -> None:
        self.wire = wire
        self.source = source  # the addresses as given, to tell whether a new set differs
        addresses = dict.fromkeys(_pack_address(text) for text in source)  # each once, in order
        self.count = len(addresses)
        # The records twice in a row, so that rotation k is one slice: records[16k : 16(k+n)].
        self.records = b"".join(A_PREFIX + address for address in addresses) * 2
        # One counter per name, kept across set_scope calls: restarting it on every change
        # (dynos come and go many times a second) would send most queries to the first dyno.
        self.turn = turn
        self.prepared = self._prepare_udp()

    def _prepare_udp(self) -> dict[bytes, Prepared]:
        """The answers of plain (no EDNS) UDP queries for A, ANY and AAAA, keyed by the query
        without its ID, lowercased: flags, counts and question.  Keys exist for RD set or not
        and AD set or not (dig sets AD, stub resolvers do not); other flag combinations and
        other types take the slower path, with the same answers."""
        nodata: _Section = (False, 0, 1, [SOA_RECORD], itertools.repeat(0))
        answer = self._udp_answer() if self.count else nodata
        prepared: dict[bytes, Prepared] = {}
        for flags in (b"\x00\x00", b"\x00\x20", b"\x01\x00", b"\x01\x20"):
            for qtype, (tc, an, ns, sections, turn) in ((A, answer), (ANY, answer), (AAAA, nodata)):
                head = reply_flags(flags, NOERROR, aa=True, tc=tc) + struct.pack(
                    "!4H", 1, an, ns, 0
                )
                key = flags + QD1 + self.wire + struct.pack("!HH", qtype, IN)
                prepared[key] = (head, sections, turn)
        return prepared

    def _udp_answer(self) -> _Section:
        """Every rotation of the records, cut to what fits in 512 bytes.  Too big: TC set, with
        as many whole records as fit rather than none.  A client that can do TCP asks again
        there for the full set; one that cannot (musl before 1.2.4, some embedded stubs) still
        gets working addresses, and since each rotation starts at another dyno the truncated
        answers still spread the load."""
        room = PLAIN_UDP_LIMIT - HEADER_LEN - len(self.wire) - 4
        fit = min(self.count, room // RECORD_LEN)
        starts = range(0, self.count * RECORD_LEN, RECORD_LEN)
        rotations = [self.records[start : start + fit * RECORD_LEN] for start in starts]
        return (fit < self.count, fit, 0, rotations, self.turn)


@dataclass(frozen=True, slots=True)
class Zone:
    """What one scope serves; replaced whole (one attribute assignment) by set_scope, so a query
    sees either the old zone or the new one, never a mix."""

    prepared: dict[bytes, Prepared]  # query after the ID, lowercased -> plain UDP answer
    names: dict[bytes, Name]  # lowercased wire name -> Name
    # Answers with nothing to rotate (NXDOMAIN, no data), prepared the first time they are
    # asked: keyed like `prepared`, and born empty with each zone, so a change of the registry
    # (a new zone) forgets them all at once.  At most MAX_NEGATIVE (cleared when full).
    negative: dict[bytes, Prepared] = field(default_factory=dict)


EMPTY_ZONE = Zone({}, {})
MAX_NEGATIVE = 4096  # a dyno asking random names may fill it: then it starts again
_NO_TURN = itertools.repeat(0)


def build_zone(records: Mapping[str, Sequence[str]], previous: Zone) -> Zone:
    """A zone for `records` (name -> IPv4 addresses), with every empty non-terminal between
    them and the apex (`sushi.app.localspace` above `web.sushi.app.localspace`) as a name with
    no addresses: RFC 8020 says NXDOMAIN denies everything below a name, so a resolver that
    applies it (unbound's harden-below-nxdomain) would lose the names below; these answer
    NOERROR with no data and the SOA, from prepared answers like any other name.

    Names whose addresses did not change keep their prepared answers from `previous`, and
    when few names changed the prepared table is a copy of the previous one (C speed) patched
    for those: the cost of a change is in proportion to what changed.
    ValueError for a bad name or address."""
    names: dict[bytes, Name] = {}
    changed: list[Name] = []
    for wire, source in _with_empty_non_terminals(records).items():
        name = previous.names.get(wire)
        if name is None or name.source != source:
            name = Name(wire, source, name.turn if name else itertools.count())
            changed.append(name)
        names[wire] = name
    gone = previous.names.keys() - names.keys()
    if 4 * (len(changed) + len(gone)) > len(names):
        prepared = {key: answer for name in names.values() for key, answer in name.prepared.items()}
    else:
        prepared = previous.prepared.copy()
        for wire in gone:
            for key in previous.names[wire].prepared:
                del prepared[key]
        for name in changed:  # the keys of a name depend on its name only: these replace
            prepared.update(name.prepared)
    return Zone(prepared, names)


def _with_empty_non_terminals(records: Mapping[str, Sequence[str]]) -> dict[bytes, tuple[str, ...]]:
    """Wire name -> addresses for `records` and for every name between them and the apex
    (no addresses).  ValueError for a bad name."""
    named = {encode_name(text): tuple(addresses) for text, addresses in records.items()}
    empty: dict[bytes, tuple[str, ...]] = {}
    for wire in named:
        parent = wire[wire[0] + 1 :]  # drop the first label
        while parent != APEX and parent not in named and parent not in empty:
            empty[parent] = ()
            parent = parent[parent[0] + 1 :]
    return named | empty


def _pack_address(text: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except OSError:
        raise ValueError(f"not an IPv4 address: {text!r}") from None


@functools.lru_cache(maxsize=65536)
def encode_name(text: str) -> bytes:
    """ "web.sushi.app.localspace" -> its lowercased wire form.  ValueError unless it is a valid
    name below localspace."""
    labels = [label.encode("ascii") for label in text.lower().rstrip(".").split(".")]
    wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
    if any(not 0 < len(label) <= 63 for label in labels) or len(wire) > MAX_NAME_LEN:
        raise ValueError(f"not a valid DNS name: {text!r}")
    if len(labels) < 2 or labels[-1] != b"localspace":
        raise ValueError(f"{text!r} is not a name below localspace")
    return wire


def local_reply(q: Query, zone: Zone, limit: int) -> bytes:
    """The answer to a query for localspace. or a name below it, at most `limit` bytes long."""
    if q.qclass not in (IN, ANY):
        return empty_reply(q, REFUSED)  # our names only exist in class IN
    name = zone.names.get(q.qname)
    if name is not None and name.count and q.qtype in (A, ANY):
        room = limit - q.question_end - len(opt_for(q))
        fit = min(name.count, max(room, 0) // RECORD_LEN)
        k = next(name.turn) % name.count  # round robin: query k starts at element k mod n
        body = name.records[k * RECORD_LEN : (k + fit) * RECORD_LEN]
        return reply(q, NOERROR, body, aa=True, tc=fit < name.count, an=fit, ns=0)
    if name is not None:  # known name, no data of this type: NOERROR at once (moby#35118)
        return reply(q, NOERROR, SOA_RECORD, aa=True, tc=False, an=0, ns=1)
    if q.qname == APEX and q.qtype == ANY:
        return reply(q, NOERROR, SOA_RECORD + NS_RECORD, aa=True, tc=False, an=2, ns=0)
    if q.qname == APEX and q.qtype == SOA:
        return reply(q, NOERROR, SOA_RECORD, aa=True, tc=False, an=1, ns=0)
    if q.qname == APEX and q.qtype == NS:
        return reply(q, NOERROR, NS_RECORD, aa=True, tc=False, an=1, ns=0)
    if q.qname == APEX:
        return reply(q, NOERROR, SOA_RECORD, aa=True, tc=False, an=0, ns=1)
    return reply(q, NXDOMAIN, SOA_RECORD, aa=True, tc=False, an=0, ns=1)


def remember_negative(zone: Zone, q: Query, reply: bytes) -> None:
    """Keep `reply` as a prepared answer of `zone` when it holds no record that rotates (no
    answer, or the apex's fixed ones) and the query is plain UDP (no EDNS).  The key is the
    hot path's: the query after its ID, lowercased; only queries whose lowercasing touched
    nothing but the name are kept (a flag or type byte that looks like a capital letter would
    otherwise share a key with another)."""
    if q.edns_size is not None or ((reply[6] or reply[7]) and q.qname != APEX):  # rotating
        return
    data = q.data
    qname_end = q.question_end - 4
    fixed = data[2:HEADER_LEN] + data[qname_end : q.question_end]
    if fixed.lower() != fixed or q.question_end != len(data):
        return
    negative = zone.negative
    if len(negative) >= MAX_NEGATIVE:
        negative.clear()
    negative[data[2:].lower()] = (reply[2:HEADER_LEN], (reply[q.question_end :],), _NO_TURN)
