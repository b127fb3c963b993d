"""What one scope serves: its names with their answers prepared in advance (the UDP hot path is
one dict lookup), and the answer to any other query for a name below localspace."""

from __future__ import annotations

import functools
import itertools
import socket
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

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
    "PackedAddresses",
    "Prepared",
    "Zone",
    "build_zone",
    "encode_name",
    "local_reply",
    "patch_zone",
    "prepare_late",
    "remember_negative",
]

# A prepared UDP answer: (flags and counts, the answer section of each rotation, the turn
# counter).  The reply is: the asker's ID + flags and counts + the question as asked + one
# answer section.
Prepared = tuple[bytes, Sequence[bytes], Iterator[int]]
# What goes into one: (TC, ANCOUNT, NSCOUNT, the sections, the turn counter)
_Section = tuple[bool, int, int, Sequence[bytes], Iterator[int]]


class PackedAddresses(Sequence[str]):
    """IPv4 addresses as one bytes object, 4 bytes each, in order: a Sequence[str] to whoever
    reads it, made by one memory copy. The registry hands the server a big formation's
    addresses in this form on each of its dynos' starts and stops: a list or tuple of 4,000
    strings costs a reference count touched on each (4,000 objects spread over the daemon's
    heap, 0.1 ms more a start at 4,000 dynos than at 20: bench/README.md, "Tenth round")."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise ValueError(f"packed IPv4 addresses take 4 bytes each, not {len(data)} in all")
        self.data = bytes(data)  # its own: query threads read it while the registry changes

    def __len__(self) -> int:
        return len(self.data) // 4

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> Sequence[str]: ...
    def __getitem__(self, k: int | slice) -> str | Sequence[str]:
        at = range(0, len(self.data), 4)[k]  # IndexError, negative indices, slices: a list's
        if isinstance(at, range):
            return [socket.inet_ntoa(self.data[i : i + 4]) for i in at]
        return socket.inet_ntoa(self.data[at : at + 4])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedAddresses):
            return self.data == other.data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"PackedAddresses({list(self)!r})"


# A name's addresses as given: a tuple of dotted quads, or packed (the registry's formations).
Source = tuple[str, ...] | PackedAddresses


class Name:
    """One name of a scope with its answers prepared: the work of a query is then a lookup.

    A name with more than EAGER_ROTATIONS addresses (a big formation) packs its addresses and
    prepares its answers when first asked (`count`, `records`, `prepared`), not when made: a
    formation of N dynos changes on each of their starts and stops, and N of those changes with
    no query between would otherwise cost N packings of N addresses (patch_zone: `late`)."""

    __slots__ = ("wire", "source", "explicit", "turn", "_count", "_records", "_prepared")

    def __init__(
        self, wire: bytes, source: Source, turn: Iterator[int], explicit: bool = True
    ) -> None:
        self.wire = wire
        self.source = source  # the addresses as given, to tell whether a new set differs
        # False for an empty non-terminal: a name that exists only because names below it do,
        # and goes with the last of them.
        self.explicit = explicit
        # One counter per name, kept across set_scope calls: restarting it on every change
        # (dynos come and go many times a second) would send most queries to the first dyno.
        self.turn = turn
        self._count = 0
        self._records: bytes | None = None
        self._prepared: dict[bytes, Prepared] | None = None
        if not self.late:  # small: packed (and its addresses checked) now
            self._pack()
            self._prepared = self._prepare_udp()

    @property
    def late(self) -> bool:
        """Prepared on its first query rather than when made."""
        return len(self.source) > EAGER_ROTATIONS

    def _pack(self) -> bytes:
        """ValueError for an address that is not IPv4 (a late name: on its first query)."""
        if self._records is None:
            addresses = _pack_addresses(self.source)
            self._count = len(addresses)
            # The records twice in a row, so that rotation k is one slice: records[16k : 16(k+n)].
            self._records = (A_PREFIX + A_PREFIX.join(addresses)) * 2 if addresses else b""
        return self._records

    @property
    def count(self) -> int:
        self._pack()
        return self._count

    @property
    def records(self) -> bytes:
        return self._pack()

    @property
    def prepared(self) -> dict[bytes, Prepared]:
        """The answers of plain UDP queries by key (a late name's made on first use; two threads
        making them at once make the same)."""
        prepared = self._prepared
        if prepared is None:
            prepared = self._prepared = self._prepare_udp()
        return prepared

    def _prepare_udp(self) -> dict[bytes, Prepared]:
        """The answers of plain (no EDNS) UDP queries for A, ANY and AAAA, keyed by the query
        without its ID, lowercased: flags, counts and question.  Keys exist for RD set or not
        and AD set or not (dig sets AD, stub resolvers do not); other flag combinations and
        other types take the slower path, with the same answers."""
        nodata: _Section = (False, 0, 1, [SOA_RECORD], itertools.repeat(0))
        answer = self._udp_answer() if self.count else nodata
        prepared: dict[bytes, Prepared] = {}
        for flags in _FLAGS:
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
        rotations: Sequence[bytes]
        if self.count > EAGER_ROTATIONS:
            rotations = _Rotations(self.records, self.count, fit * RECORD_LEN)
        else:
            starts = range(0, self.count * RECORD_LEN, RECORD_LEN)
            rotations = [self.records[start : start + fit * RECORD_LEN] for start in starts]
        return (fit < self.count, fit, 0, rotations, self.turn)


class _Rotations(Sequence[bytes]):
    """The rotations of a name with many addresses, each cut when a query asks for it: a
    formation of 4,000 dynos would otherwise cut 4,000 sections (2 MB) on each dyno's start
    and stop.  A query pays about 0.2 us more for the call."""

    __slots__ = ("records", "n", "size")

    def __init__(self, records: bytes, count: int, size: int) -> None:
        self.records = records
        self.n = count
        self.size = size

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, k: int) -> bytes: ...
    @overload
    def __getitem__(self, k: slice) -> Sequence[bytes]: ...
    def __getitem__(self, k: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.n))]
        if not 0 <= k < self.n:
            raise IndexError(k)
        start = k * RECORD_LEN
        return self.records[start : start + self.size]


@dataclass(frozen=True, slots=True)
class Zone:
    """What one scope serves.  set_scope replaces it whole (one attribute assignment).
    update_scope (patch_zone) changes its names, prepared answers and children in place, name by
    name and key by key (a query sees a name's old answer or its new one), and replaces the zone
    object for a new `negative` table: a query that read a name before the change and remembers
    its negative answer puts it in the old table, which no query reads any more."""

    prepared: dict[bytes, Prepared]  # query after the ID, lowercased -> plain UDP answer
    names: dict[bytes, Name]  # lowercased wire name -> Name
    # Answers with nothing to rotate (NXDOMAIN, no data), prepared the first time they are
    # asked: keyed like `prepared`.  A whole new zone (build_zone) starts with none; a patched
    # one (patch_zone) keeps those of the names the patch did not touch.  At most MAX_NEGATIVE
    # (cleared when full).
    negative: dict[bytes, Prepared] = field(default_factory=dict)
    # Wire name -> how many names of the zone are directly below it: an empty non-terminal
    # goes when this drops to 0 (patch_zone).
    children: dict[bytes, int] = field(default_factory=dict)
    # Late names (Name.late) changed since their answers were last in `prepared`: their
    # queries take the slower path until the first one puts them there (prepare_late).
    late: set[bytes] = field(default_factory=set)


EMPTY_ZONE = Zone({}, {})  # never changed: patch_zone starts a new zone from it
# Where the name starts in a key of `prepared` / `negative`: after the flags and the counts.
_KEY_NAME = 10
EAGER_ROTATIONS = 64  # names with more addresses cut their rotations when asked (_Rotations)
MAX_NEGATIVE = 4096  # a dyno asking random names may fill it: then it starts again
_NO_TURN = itertools.repeat(0)
_FLAGS = (b"\x00\x00", b"\x00\x20", b"\x01\x00", b"\x01\x20")  # RD, AD: set or not


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
    explicit = {encode_name(text) for text in records}
    for wire, source in _with_empty_non_terminals(records).items():
        name = previous.names.get(wire)
        if name is None or not _same(name.source, source) or name.explicit != (wire in explicit):
            turn = name.turn if name else itertools.count()
            name = Name(wire, source, turn, wire in explicit)
            changed.append(name)
        names[wire] = name
    gone = previous.names.keys() - names.keys()
    children: dict[bytes, int] = {}
    for wire in names:
        parent = _parent(wire)
        children[parent] = children.get(parent, 0) + 1
    if 4 * (len(changed) + len(gone) + len(previous.late)) > len(names):
        prepared = {key: answer for name in names.values() for key, answer in name.prepared.items()}
    else:
        prepared = previous.prepared.copy()
        for wire in gone:
            for key in _keys(wire):
                prepared.pop(key, None)
        # the keys of a name depend on its name only: these replace
        for name in itertools.chain(changed, (names[w] for w in previous.late if w in names)):
            prepared.update(name.prepared)
    return Zone(prepared, names, children=children)


def patch_zone(previous: Zone, changes: Mapping[str, Sequence[str] | None]) -> Zone:
    """`previous` with `changes` applied: name -> its new addresses, or None for a name that
    goes.  The same zone as build_zone of the changed records (tests/unit/dns/test_zone.py),
    at the cost of what changed: one dyno's start or stop touches its own name and its
    formation's, not the thousands of others of its space, and a big formation's answers are
    prepared on its first query after the change (Name.late), not on each change.

    `previous` is changed in place (see Zone): its names, prepared answers and children are
    the returned zone's; the returned zone has its own negative answers, those of `previous`
    but for the names this change touched (empty non-terminals included).  The caller holds
    the lock that prepare_late takes.  ValueError for a bad name, or a bad address of a name
    that is not late (nothing changes then); a late name's bad address is found when it is
    first asked."""
    if previous is EMPTY_ZONE:
        previous = Zone({}, {})
    checked = [(encode_name(text), _source(addresses)) for text, addresses in changes.items()]
    for _wire, source in checked:
        if source is not None and len(source) <= EAGER_ROTATIONS:
            _pack_addresses(source)  # before anything changes
    names, children, prepared, late = (
        previous.names,
        previous.children,
        previous.prepared,
        previous.late,
    )
    touched: set[bytes] = set()
    for wire, source in checked:
        if source is None:
            _remove(wire, names, children, touched)
        else:
            _put(wire, source, names, children, touched)
    for wire in touched:  # the keys of a name depend on its name only
        name = names.get(wire)
        if name is not None and not name.late:
            prepared.update(name.prepared)  # key by key: each query sees the old or the new
            late.discard(wire)
            continue
        for key in _keys(wire):
            prepared.pop(key, None)
        if name is None:
            late.discard(wire)
        else:
            late.add(wire)
    # A copy first (one C call: atomic while query threads add to the old one), then weeded.
    negative = previous.negative.copy()
    for key in [key for key in negative if key[_KEY_NAME:-4] in touched]:
        del negative[key]
    return Zone(prepared, names, negative, children, late)


def prepare_late(zone: Zone, wire: bytes) -> None:
    """Put a late name's answers in the zone's prepared table, on its first query after a
    change; under the lock the zone's patches are made under."""
    if wire in zone.late:
        name = zone.names.get(wire)
        if name is not None:
            zone.prepared.update(name.prepared)
        zone.late.discard(wire)


def _keys(wire: bytes) -> list[bytes]:
    """The keys of a name's prepared answers (Name._prepare_udp)."""
    return [
        flags + QD1 + wire + struct.pack("!HH", qtype, IN)
        for flags in _FLAGS
        for qtype in (A, ANY, AAAA)
    ]


def _same(a: Source, b: Source) -> bool:
    """Whether two sources are the same addresses in the same order: a packed one (the
    registry's changes) and a listed one (a publish's records) too, so that a name whose
    addresses did not change keeps its prepared answers across the two."""
    if type(a) is type(b):
        return a == b
    try:
        return _packed(a) == _packed(b)
    except OSError:  # a listed address that is not IPv4: not what a packed source holds
        return False


def _packed(source: Source) -> bytes:
    if isinstance(source, PackedAddresses):
        return source.data
    return b"".join(socket.inet_pton(socket.AF_INET, text) for text in source)


def _source(addresses: Sequence[str] | None) -> Source | None:
    """The addresses kept as a name's source: packed ones as they are (no copy)."""
    if addresses is None or isinstance(addresses, PackedAddresses):
        return addresses
    return tuple(addresses)


def _put(
    wire: bytes,
    source: Source,
    names: dict[bytes, Name],
    children: dict[bytes, int],
    touched: set[bytes],
) -> None:
    """Give `wire` the addresses `source`, adding the empty non-terminals above it."""
    name = names.get(wire)
    if name is not None and name.explicit and _same(name.source, source):
        return
    names[wire] = Name(wire, source, name.turn if name else itertools.count())
    touched.add(wire)
    while name is None:  # a new name: its parent counts one more child, and may be new too
        parent = _parent(wire)
        children[parent] = children.get(parent, 0) + 1
        if parent == APEX:
            return
        name = names.get(parent)
        if name is None:
            names[parent] = Name(parent, (), itertools.count(), explicit=False)
            touched.add(parent)
        wire = parent


def _remove(
    wire: bytes, names: dict[bytes, Name], children: dict[bytes, int], touched: set[bytes]
) -> None:
    """Take `wire`'s records away: it stays as an empty non-terminal while names are below it,
    else it goes, and so do the empty non-terminals above it that it alone kept."""
    name = names.get(wire)
    if name is None or not name.explicit:
        return  # not a name of the records: nothing to take away
    touched.add(wire)
    if children.get(wire):
        names[wire] = Name(wire, (), name.turn, explicit=False)
        return
    while True:
        del names[wire]
        parent = _parent(wire)
        left = children[parent] - 1
        if left:
            children[parent] = left
            return
        del children[parent]
        if parent == APEX or names[parent].explicit:
            return
        wire = parent
        touched.add(wire)


def _parent(wire: bytes) -> bytes:
    return wire[wire[0] + 1 :]  # drop the first label


def _with_empty_non_terminals(records: Mapping[str, Sequence[str]]) -> dict[bytes, tuple[str, ...]]:
    """Wire name -> addresses for `records` and for every name between them and the apex
    (no addresses).  ValueError for a bad name."""
    named = {encode_name(text): tuple(addresses) for text, addresses in records.items()}
    empty: dict[bytes, tuple[str, ...]] = {}
    for wire in named:
        parent = _parent(wire)
        while parent != APEX and parent not in named and parent not in empty:
            empty[parent] = ()
            parent = _parent(parent)
    return named | empty


def _pack_addresses(source: Sequence[str]) -> dict[bytes, None]:
    """The addresses packed, each once, in order (one C loop: a formation may have thousands).
    ValueError for one that is not an IPv4 address."""
    if isinstance(source, PackedAddresses):
        data = source.data
        return dict.fromkeys(data[at : at + 4] for at in range(0, len(data), 4))
    try:
        return dict.fromkeys(map(socket.inet_pton, itertools.repeat(socket.AF_INET), source))
    except OSError:
        for text in source:
            try:
                socket.inet_pton(socket.AF_INET, text)
            except OSError:
                raise ValueError(f"not an IPv4 address: {text!r}") from None
        raise


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
