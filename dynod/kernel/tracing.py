"""`dynod trace`'s kernel work (kernel thread): the probe's socket, opened in the namespace it
starts from; trace listeners in every namespace on its path; the tables that switch tracing on
for its flow, and their removal. As commands:

    ip netns exec FROM_NS nft monitor trace &          # and on the host, and in TO_NS
    nft -f - <<< 'table inet PREFIX-trace { chain output { type filter hook output
        priority -400; FLOW limit rate 1/hour burst 1 packets meta nftrace set 1 } ... }'
    ...the probe...
    nft -a -t list ruleset                             # rule handles -> rule text
    nft delete table inet PREFIX-trace                 # in each namespace, the host's last

The host's tables are made first and removed last: a daemon killed mid-trace leaves them as the
sign that dyno namespaces may hold one too, and start-up removes them all (sweep_leftovers).
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from dynod.errors import DynodError
from dynod.kernel.machine import Machine
from netns import identity, namespace, nftrace
from netns.nftables import Nft, NftError, NoLowDescriptor

SO_MARK = 36
# where tracing starts in each place: the host sees packets from dynos (prerouting, in the bridge
# family first) and its own (output); a dyno's namespace its own (output) and arrivals
HOST_TABLES = (("bridge", nftrace.BRIDGE_HOOKS), ("inet", nftrace.INET_HOOKS))
FROM_HOOKS = ("output", "postrouting")
TO_HOOKS = ("prerouting", "input")


@dataclass(frozen=True)
class ProbePlan:
    """One probe, in kernel terms: None as a namespace is the host's."""

    protocol: str  # "tcp", "udp", "icmp"
    dst: str
    dport: int | None
    src_netns: str | None
    src: str | None  # the source address when it is known (a dyno's eth0)
    dst_netns: str | None
    mark: int = 0  # SO_MARK of the probe's socket (the router's in the daemon)
    user: int | None = None  # the owner of the probe's socket (the router workers' user)

    def places(self) -> list[str | None]:
        """The namespaces the probe passes, in order: where it starts, the host, where it ends."""
        found: list[str | None] = []
        for place in (self.src_netns, None, self.dst_netns):
            if place not in found:
                found.append(place)
        return found


@dataclass
class Opened:
    """What a trace holds while it runs: the probe's socket, its flow, a listener per place."""

    probe: socket.socket
    flow: nftrace.Flow
    watches: list[tuple[str | None, nftrace.TraceEvents]] = field(default_factory=list)


def table_name(m: Machine) -> str:
    return f"{m.names.prefix}-trace"


@contextlib.contextmanager
def _inside(netns: str | None) -> Iterator[None]:
    """`ip netns exec NETNS` for this thread, or nothing for the host."""
    if netns is None:
        yield
    else:
        with namespace.entered(netns):
            yield


def _nft(netns: str | None, text: str, handles: bool = False) -> str:
    """`ip netns exec NETNS nft -f -` (its own libnftables context, opened inside)."""
    try:
        with _inside(netns), Nft() as nft:
            return nft.run(text, handles=handles)
    except NoLowDescriptor as exc:
        raise DynodError(
            f"cannot trace now: {exc}",
            "try again when fewer connections to the API and the router are open",
            status=503,
        ) from exc


def open_trace(m: Machine, plan: ProbePlan) -> Opened:
    """Listeners first, then the probe's socket (bound: its source port is the flow's), then
    the tables, the host's first. All or nothing."""
    watches: list[tuple[str | None, nftrace.TraceEvents]] = []
    probe: socket.socket | None = None
    try:
        for place in plan.places():
            with _inside(place):
                watches.append((place, nftrace.TraceEvents()))
        probe, flow = _probe_socket(plan)
        opened = Opened(probe, flow, watches)
        name = table_name(m)
        # the host's tables in one transaction: both or neither
        _nft(None, "\n".join(nftrace.trace_table(f, name, h, flow) for f, h in HOST_TABLES))
        if plan.src_netns is not None:
            _nft(plan.src_netns, nftrace.trace_table("inet", name, FROM_HOOKS, flow))
        if plan.dst_netns is not None:
            _nft(plan.dst_netns, nftrace.trace_table("inet", name, TO_HOOKS, flow))
        return opened
    except BaseException:
        for _, watch in watches:
            watch.close()
        if probe is not None:
            probe.close()
        remove_tables(m, [plan.src_netns, plan.dst_netns])
        raise


def _probe_socket(plan: ProbePlan) -> tuple[socket.socket, nftrace.Flow]:
    """A non-blocking socket in the probe's namespace, bound so that its flow is known before
    anything is sent: a TCP or UDP source port, an ICMP echo id."""
    kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}.get(plan.protocol)
    owner = identity.files_as(plan.user) if plan.user is not None else contextlib.nullcontext()
    with _inside(plan.src_netns), owner:
        if kind is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        else:
            sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setblocking(False)
        if plan.mark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, plan.mark)
        sock.bind((plan.src or "0.0.0.0", 0))
        if kind is None:
            icmp_id = random.randrange(1, 0xFFFF)
            return sock, nftrace.Flow("icmp", plan.dst, plan.src, icmp_id=icmp_id)
        sport = int(sock.getsockname()[1])
        return sock, nftrace.Flow(plan.protocol, plan.dst, plan.src, sport, plan.dport)
    except BaseException:
        sock.close()
        raise


def listings(places: list[str | None]) -> dict[str | None, str]:
    """`nft -a -t list ruleset` in each place still there: rule handles to rule text."""
    found: dict[str | None, str] = {}
    for place in places:
        with contextlib.suppress(FileNotFoundError, NftError):
            found[place] = _nft(place, "list ruleset", handles=True)
    return found


def close_trace(m: Machine, plan: ProbePlan, opened: Opened | None) -> None:
    """Every trace table gone (the host's last), every socket closed."""
    try:
        remove_tables(m, [plan.src_netns, plan.dst_netns])
    finally:
        if opened is not None:
            opened.probe.close()
            for _, watch in opened.watches:
                watch.close()


def remove_tables(m: Machine, namespaces: list[str | None]) -> None:
    """`ip netns exec NS nft delete table inet PREFIX-trace` where NS still exists, then the
    host's tables. A namespace removed meanwhile took its table with it."""
    name = table_name(m)
    for netns in namespaces:
        if netns is not None:
            with contextlib.suppress(FileNotFoundError):
                _nft(netns, nftrace.remove_table("inet", name))
    _nft(None, "".join(nftrace.remove_table(family, name) for family, _ in HOST_TABLES))


def sweep_leftovers(m: Machine) -> bool:
    """A daemon killed mid-trace left its host tables (made first, removed last): remove the
    trace table of every namespace of ours, then the host's. Whether there were any."""
    name = table_name(m)
    if not any(table == name for _, table in m.nftables().tables()):
        return False
    remove_tables(m, [*namespace.names(f"{m.names.prefix}-")])
    return True
