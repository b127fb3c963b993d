"""A lean rtnetlink socket for the calls made on every dyno's setup and teardown.

pyroute2 0.9's synchronous IPRoute runs an asyncio request for every call: about 0.14 ms of
Python per `ip link set up`, 0.3 ms per index lookup, 0.2 ms to open one (measured on the 2-CPU
VM), for a kernel round trip of about 0.01 ms. A dyno's setup makes about ten such calls, so
pyroute2's own work was a third of it. `Rtnl` sends the same messages, packed with `struct`, on
a plain NETLINK_ROUTE socket, and waits for each one's acknowledgement: one send and one receive
per call, nothing else.

It offers the few pyroute2 methods the per-dyno path uses, with the same names and keywords, so
the functions of links.py and addresses.py (and their recorder notes) are the same for both: a
refusal raises pyroute2's NetlinkError with the kernel's errno, as IPRoute does. It also gives
namespaces their ids and lists them (netns/nsid.py), which pyroute2 0.9's IPRoute does not offer.
Anything else (other dumps, bridges, start-up and reconcile) stays with pyroute2.

A socket belongs to the network namespace of the thread that opened it; interface names are
looked up with if_nametoindex(3) (an ioctl on a socket of the calling thread's namespace), so an
Rtnl is used on a thread that is in the namespace it was opened in, as IPRoute is here.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import NamedTuple

from pyroute2.netlink.exceptions import NetlinkError

from netns import nlmsg

# message types (linux/rtnetlink.h)
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_NEWNSID = 88
RTM_GETNSID = 90
NLMSG_ERROR = 2
NLMSG_DONE = 3
# header flags (linux/netlink.h)
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
# socket options (linux/netlink.h)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_GET_STRICT_CHK = 12
# attributes (linux/if_link.h, if_addr.h, rtnetlink.h, neighbour.h)
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_LINKINFO = 18
IFLA_AF_SPEC = 26
IFLA_NET_NS_FD = 28
IFLA_NUM_TX_QUEUES = 31
IFLA_NUM_RX_QUEUES = 32
IFLA_INET_CONF = 1  # in IFLA_AF_SPEC, AF_INET: the IPv4 settings (IPV4_DEVCONF_*)
IPV4_DEVCONF_ARP_IGNORE = 19
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFLA_BRPORT_LEARNING = 8
IFLA_BRPORT_UNICAST_FLOOD = 9
IFLA_BRPORT_ISOLATED = 33
NETNSA_NSID = 1  # linux/net_namespace.h
NETNSA_FD = 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RTA_ENCAP = 22
RTA_NH_ID = 30
NDA_DST = 1
NDA_LLADDR = 2
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255  # in a deletion: any scope
RTN_UNICAST = 1
RTN_LOCAL = 2
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_STATIC = 4
NUD_PERMANENT = 0x80


class Route(NamedTuple):
    """One IPv4 route as `ip route show table all` lists it, the fields dynod asks."""

    table: int  # RT_TABLE_MAIN, RT_TABLE_LOCAL, ...
    kind: int  # RTN_UNICAST, RTN_LOCAL, ...
    proto: int  # RTPROT_STATIC, ...
    dst: str  # "0.0.0.0" for a default route
    dst_len: int
    oif: int  # its device's index; 0: none
    source: str  # its `src`; "": none
    tos: int = 0  # its `tos` (a lookup with another tos never meets it)
    nh_id: int = 0  # its `nhid` (a nexthop object); 0: none
    gateway: str = ""  # its `via`; "": none (the destination is on the device's link)
    # a next hop of another kind (an IPv6 `via`, `nexthop`s, an `encap`): not a device route
    other_hop: bool = False


def route_of(body: bytes) -> Route | None:
    """An RTM_NEWROUTE or RTM_DELROUTE message's route (its body: what follows the netlink
    header); None for one that is not IPv4's."""
    family, dst_len, _src_len, tos, table, proto, _scope, kind, _flags = _RTMSG.unpack_from(body)
    if family != socket.AF_INET:
        return None
    attrs = nlmsg.attributes(body[_RTMSG.size :])
    if RTA_TABLE in attrs:  # the table's full number (rtm_table holds only 8 bits)
        table = struct.unpack_from("=I", attrs[RTA_TABLE])[0]
    dst = socket.inet_ntoa(attrs[RTA_DST][:4]) if RTA_DST in attrs else "0.0.0.0"
    oif = struct.unpack_from("=i", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
    source = socket.inet_ntoa(attrs[RTA_PREFSRC][:4]) if RTA_PREFSRC in attrs else ""
    nh_id = struct.unpack_from("=I", attrs[RTA_NH_ID])[0] if RTA_NH_ID in attrs else 0
    gateway = socket.inet_ntoa(attrs[RTA_GATEWAY][:4]) if RTA_GATEWAY in attrs else ""
    other_hop = any(attr in attrs for attr in (RTA_MULTIPATH, RTA_VIA, RTA_ENCAP))
    return Route(table, kind, proto, dst, dst_len, oif, source, tos, nh_id, gateway, other_hop)


_HEADER = nlmsg.HEADER
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, ...
_NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
_RTGEN = struct.Struct("=Bxxx")  # rtgenmsg: family, padded to 4 bytes
_ERROR = struct.Struct("=i")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _string(value: str) -> bytes:
    return value.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _u8(value: int) -> bytes:
    return struct.pack("=B", value)


def _mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


def _ipv4(value: str) -> bytes:
    return socket.inet_aton(value)


class Rtnl:
    """One NETLINK_ROUTE socket in the calling thread's network namespace; one request at a
    time (callers keep it to one thread, as the kernel worker does)."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, 0))
            # a refusal's acknowledgement without the request copied back into it
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except BaseException:
            self._sock.close()
            raise
        # dumps filtered by the kernel (routes_through); a kernel before 4.20 has no such
        # check, and its dumps are filtered here instead
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            self._strict = True
        except OSError:
            self._strict = False
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    # ------------------------------------------------------------ the one round trip
    def request(self, kind: int, flags: int, body: bytes) -> None:
        """Send one message and wait for its acknowledgement; NetlinkError on a refusal."""
        with self._lock:
            seq = self._send(kind, flags | NLM_F_ACK, body)
            while True:
                for mtype, mseq, reply in nlmsg.frames(self._sock.recv(65536)):
                    if mtype == NLMSG_ERROR and mseq == seq:
                        error = -_ERROR.unpack_from(reply)[0]
                        if error:
                            raise NetlinkError(error, os.strerror(error))
                        return

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        """One request on the socket (the caller holds the lock); its sequence number."""
        self._seq = self._seq % 0xFFFFFFFF + 1
        flags |= NLM_F_REQUEST
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, self._seq, 0) + body)
        return self._seq

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """Send one dump request and collect the answer's messages (each without its header)
        until its end; NetlinkError on a refusal."""
        with self._lock:
            seq = self._send(kind, NLM_F_DUMP, body)
            messages: list[bytes] = []
            while True:
                for mtype, mseq, reply in nlmsg.frames(self._sock.recv(65536)):
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_DONE:
                        # a dump that failed midway says so in its end (netlink_dump_done)
                        error = -_ERROR.unpack_from(reply)[0] if len(reply) >= _ERROR.size else 0
                        if error > 0:
                            raise NetlinkError(error, os.strerror(error))
                        return messages
                    if mtype == NLMSG_ERROR:
                        error = -_ERROR.unpack_from(reply)[0]
                        raise NetlinkError(error, os.strerror(error))
                    messages.append(reply)

    def routes(self) -> list[Route]:
        """`ip -4 route show table all`, parsed here: at 4,000 dynos' 8,000 routes, tens of
        ms, where pyroute2's parser takes most of a second."""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        return [r for m in self.dump(RTM_GETROUTE, body) if (r := route_of(m)) is not None]

    @property
    def filters(self) -> bool:
        """Does the kernel filter dumps (routes_through)? Not before 4.20."""
        return self._strict

    def routes_through(self, index: int) -> list[Route]:
        """`ip -4 route show table all dev IF`, in the kernel's order (a prefix's routes in the
        order a lookup meets them): the kernel sends only those (a strict dump's filter), so one
        bridge's routes cost what they are, not what every bridge's are (the whole table is
        8,000 routes at 4,000 dynos, 15-20 ms to read). An IF that is gone: NetlinkError
        ENODEV (where the kernel filters; else the whole table is read, and filtered here)."""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        if self._strict:
            body += _attr(RTA_OIF, _u32(index))
        return [
            r
            for m in self.dump(RTM_GETROUTE, body)
            if (r := route_of(m)) is not None and r.oif == index
        ]

    # ------------------------------------------------------------ namespace ids (netns/nsid.py)
    def set_nsid(self, fd: int, nsid: int) -> None:
        """`ip netns set NAME NSID`, the namespace given as an open fd of it."""
        body = _RTGEN.pack(socket.AF_UNSPEC)
        body += _attr(NETNSA_NSID, struct.pack("=i", nsid)) + _attr(NETNSA_FD, _u32(fd))
        self.request(RTM_NEWNSID, NLM_F_CREATE | NLM_F_EXCL, body)

    def nsids(self) -> list[int]:
        """`ip netns list-id`: the ids this socket's namespace gave other namespaces."""
        found = []
        for message in self.dump(RTM_GETNSID, _RTGEN.pack(socket.AF_UNSPEC)):
            nsid = nlmsg.attributes(message[_RTGEN.size :]).get(NETNSA_NSID)
            if nsid is not None:
                found.append(struct.unpack("=i", nsid[:4])[0])
        return found

    # ------------------------------------------------------------ what links.py asks
    def link(
        self,
        command: str,
        *,
        index: int = 0,
        ifname: str | None = None,
        kind: str | None = None,
        address: str | None = None,
        master: int | None = None,
        state: str | None = None,
        num_tx_queues: int | None = None,
        num_rx_queues: int | None = None,
        peer: dict[str, object] | None = None,
    ) -> None:
        """`ip link add NAME [address MAC] [master IF] [up] [numtxqueues N] [numrxqueues N] type
        veth peer ...`, `ip link set IF up`, `ip link set IF address MAC`, `ip link del IF`."""
        up = IFF_UP if state == "up" else 0
        if state not in (None, "up"):
            raise ValueError(f"unsupported link state {state!r}")
        attrs = []
        if ifname is not None:
            attrs.append(_attr(IFLA_IFNAME, _string(ifname)))
        if address is not None:
            attrs.append(_attr(IFLA_ADDRESS, _mac(address)))
        if master is not None:
            attrs.append(_attr(IFLA_MASTER, _u32(master)))
        attrs += _queues(num_tx_queues, num_rx_queues)
        if command == "add":
            if kind != "veth" or peer is None:
                raise ValueError("Rtnl.link('add') makes veth pairs only")
            attrs.append(
                _nested(
                    IFLA_LINKINFO,
                    _attr(IFLA_INFO_KIND, _string("veth")),
                    _nested(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _peer(peer))),
                )
            )
            body = _IFINFO.pack(0, 0, 0, up, up) + b"".join(attrs)
            self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
        elif command == "set":
            if kind is not None or peer is not None or not index:
                raise ValueError("Rtnl.link('set') takes an index and plain attributes")
            self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, up, up) + b"".join(attrs))
        elif command == "del":
            self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0) + b"".join(attrs))
        else:
            raise ValueError(f"unsupported link command {command!r}")

    def ipv4_conf(self, *, index: int, settings: dict[int, int]) -> None:
        """`sysctl -w net.ipv4.conf.IF.NAME=VALUE` for each IPV4_DEVCONF_* id given, through
        netlink (IFLA_AF_SPEC, AF_INET, IFLA_INET_CONF): no /proc/sys path lookup, whose cost
        grows with the number of network namespaces on the host."""
        conf = b"".join(_attr(key, _u32(value)) for key, value in settings.items())
        spec = _nested(IFLA_AF_SPEC, _nested(socket.AF_INET, _nested(IFLA_INET_CONF, conf)))
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, 0, 0) + spec)

    def brport(
        self, command: str, *, index: int, isolated: int, learning: int, unicast_flood: int
    ) -> None:
        """`bridge link set dev PORT isolated on|off learning on|off flood on|off`."""
        if command != "set":
            raise ValueError(f"unsupported brport command {command!r}")
        info = _nested(
            IFLA_PROTINFO,
            _attr(IFLA_BRPORT_ISOLATED, _u8(isolated)),
            _attr(IFLA_BRPORT_LEARNING, _u8(learning)),
            _attr(IFLA_BRPORT_UNICAST_FLOOD, _u8(unicast_flood)),
        )
        self.request(RTM_SETLINK, 0, _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0) + info)

    def fdb(self, command: str, *, ifindex: int, lladdr: str, state: int, flags: int) -> None:
        """`bridge fdb replace MAC dev PORT [master] [static]`."""
        if command != "replace":
            raise ValueError(f"unsupported fdb command {command!r}")
        body = _NDMSG.pack(socket.AF_BRIDGE, ifindex, state, flags, 0)
        body += _attr(NDA_LLADDR, _mac(lladdr))
        self.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)

    def addr(self, command: str, *, index: int, address: str, prefixlen: int) -> None:
        """`ip addr add|del ADDRESS/PREFIXLEN dev IF` (IPv4)."""
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, _ipv4(address)) + _attr(IFA_ADDRESS, _ipv4(address))
        if command == "add":
            self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)
        elif command == "del":
            self.request(RTM_DELADDR, 0, body)
        else:
            raise ValueError(f"unsupported addr command {command!r}")

    def route(self, command: str, *, dst: str, gateway: str, proto: int = RTPROT_BOOT) -> None:
        """`ip route add DST via GATEWAY proto PROTO` (IPv4, table main)."""
        network, _, length = dst.partition("/")
        prefixlen = int(length) if length else 32
        if command != "add":
            raise ValueError(f"unsupported route command {command!r}")
        body = _RTMSG.pack(
            socket.AF_INET, prefixlen, 0, 0, RT_TABLE_MAIN, proto, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
        )
        if prefixlen:
            body += _attr(RTA_DST, _ipv4(network))
        body += _attr(RTA_GATEWAY, _ipv4(gateway))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def device_route(
        self, command: str, *, dst: str, prefixlen: int, index: int, source: str, local: bool
    ) -> None:
        """`ip route add|del DST/PREFIXLEN dev IF proto static scope link src SOURCE` (table
        main), or with `local`: `ip route add|del local DST/PREFIXLEN dev IF table local proto
        static` (scope host: the host takes DST as its own; SOURCE is DST)."""
        table, scope, kind = (
            (RT_TABLE_LOCAL, RT_SCOPE_HOST, RTN_LOCAL)
            if local
            else (RT_TABLE_MAIN, RT_SCOPE_LINK, RTN_UNICAST)
        )
        body = _RTMSG.pack(socket.AF_INET, prefixlen, 0, 0, table, RTPROT_STATIC, scope, kind, 0)
        body += _attr(RTA_DST, _ipv4(dst)) + _attr(RTA_OIF, _u32(index))
        body += _attr(RTA_PREFSRC, _ipv4(source))
        if command == "add":
            self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)
        elif command == "del":
            self.request(RTM_DELROUTE, 0, body)
        else:
            raise ValueError(f"unsupported route command {command!r}")

    def delete_route(self, route: Route) -> None:
        """`ip route del [TYPE] DST/LEN [tos TOS] ([via GATEWAY] dev IF | nhid ID) table TABLE
        proto PROTO [src SOURCE]`: this route as a dump listed it, of any scope (NetlinkError
        ESRCH or ENOENT: not there). A route of a nexthop object is named by its id alone: the
        kernel matches no device against it (fib_nh_match)."""
        table = route.table if route.table < 256 else 0  # the full number in RTA_TABLE
        body = _RTMSG.pack(
            socket.AF_INET,
            route.dst_len,
            0,
            route.tos,
            table,
            route.proto,
            RT_SCOPE_NOWHERE,
            route.kind,
            0,
        )
        if route.dst_len:
            body += _attr(RTA_DST, _ipv4(route.dst))
        body += _attr(RTA_TABLE, _u32(route.table))
        if route.nh_id:
            body += _attr(RTA_NH_ID, _u32(route.nh_id))
        elif route.oif:
            body += _attr(RTA_OIF, _u32(route.oif))
        if route.gateway and not route.nh_id:
            body += _attr(RTA_GATEWAY, _ipv4(route.gateway))
        if route.source:
            body += _attr(RTA_PREFSRC, _ipv4(route.source))
        self.request(RTM_DELROUTE, 0, body)

    def delete_first(self, table: int, dst: str, dst_len: int) -> None:
        """`ip route del DST/LEN table TABLE`: the first route there (tos 0) a lookup would meet,
        whatever its type, protocol or device (NetlinkError ESRCH: none)."""
        body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, 0, 0, RT_SCOPE_NOWHERE, 0, 0)
        body += _attr(RTA_DST, _ipv4(dst)) + _attr(RTA_TABLE, _u32(table))
        self.request(RTM_DELROUTE, 0, body)

    def neigh(self, command: str, *, ifindex: int, dst: str, lladdr: str = "") -> None:
        """`ip neigh del ADDRESS dev IF`, or `ip neigh replace ADDRESS lladdr MAC dev IF nud
        permanent` (IPv4)."""
        if command == "del":
            body = _NDMSG.pack(socket.AF_INET, ifindex, 0, 0, 0) + _attr(NDA_DST, _ipv4(dst))
            self.request(RTM_DELNEIGH, 0, body)
        elif command == "replace" and lladdr:
            body = _NDMSG.pack(socket.AF_INET, ifindex, NUD_PERMANENT, 0, 0)
            body += _attr(NDA_DST, _ipv4(dst)) + _attr(NDA_LLADDR, _mac(lladdr))
            self.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body)
        else:
            raise ValueError(f"unsupported neigh command {command!r}")

    # ------------------------------------------------------------ names and indexes
    @staticmethod
    def index_of(name: str) -> int | None:
        """`cat /sys/class/net/NAME/ifindex`, for the calling thread's namespace."""
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    @staticmethod
    def name_of(index: int) -> str:
        try:
            return socket.if_indextoname(index)
        except OSError:
            return f"if{index}"


def _queues(tx: int | None, rx: int | None) -> list[bytes]:
    return [
        _attr(kind, _u32(n))
        for kind, n in ((IFLA_NUM_TX_QUEUES, tx), (IFLA_NUM_RX_QUEUES, rx))
        if n
    ]


def _peer(peer: dict[str, object]) -> bytes:
    """A veth peer: an ifinfomsg and its own name, MAC, namespace (an fd) and queues."""
    unknown = set(peer) - {"ifname", "address", "net_ns_fd", "num_tx_queues", "num_rx_queues"}
    if unknown:
        raise ValueError(f"unsupported veth peer attributes {sorted(unknown)}")
    attrs = _IFINFO.pack(0, 0, 0, 0, 0)
    if "ifname" in peer:
        attrs += _attr(IFLA_IFNAME, _string(str(peer["ifname"])))
    if "address" in peer:
        attrs += _attr(IFLA_ADDRESS, _mac(str(peer["address"])))
    if "net_ns_fd" in peer:
        fd = peer["net_ns_fd"]
        assert isinstance(fd, int)
        attrs += _attr(IFLA_NET_NS_FD, _u32(fd))
    tx, rx = peer.get("num_tx_queues"), peer.get("num_rx_queues")
    assert tx is None or isinstance(tx, int)
    assert rx is None or isinstance(rx, int)
    return attrs + b"".join(_queues(tx, rx))
