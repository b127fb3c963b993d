"""`dynod trace`: one real probe with nftables tracing on for its flow only, its path read back
from the trace events, and everything the trace made removed (also when the client goes away
or the daemon stops). One trace at a time: a second is refused while one runs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping

from dynod.api.wire import Stream, ndjson
from dynod.errors import DynodError
from dynod.kernel import tracing
from dynod.kernel.host import Kernel
from dynod.state.store import State
from dynod.trace.ends import EndFinder, Ends
from dynod.trace.path import Place, Report, parse_listing, steps, verdict
from dynod.trace.spec import TraceRequest
from netns.nftrace import TraceEvent

SETTLE = 0.05  # seconds for the last trace events to be read after the probe's answer
PAYLOAD = b"dynod trace\n"


class TraceService:
    def __init__(self, state: State, kernel: Kernel, router_port: Callable[[], int]) -> None:
        self.kernel = kernel
        self.ends = EndFinder(state, kernel, router_port)
        self._busy = False

    async def stream(self, request: TraceRequest) -> Stream:
        """Checks first (a refused trace is a plain error answer); then the trace, streamed, so
        that a client that goes away (Ctrl-C) cancels it."""
        self._refuse_if_busy()
        ends = await self.ends.find(request)
        self._refuse_if_busy()  # another trace may have begun while the ends were looked up
        self._busy = True
        started = False

        async def chunks(closed: asyncio.Event) -> AsyncIterator[bytes]:
            nonlocal started
            started = True
            task = asyncio.ensure_future(self._run(request, ends))
            gone = asyncio.ensure_future(closed.wait())
            try:
                await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    yield ndjson(_answer(task))
            finally:
                gone.cancel()
                task.cancel()  # its own finally removes what it made
                await asyncio.gather(task, return_exceptions=True)
                self._busy = False

        def on_close() -> None:
            if not started:
                self._busy = False

        return Stream("application/x-ndjson", chunks, on_close)

    def _refuse_if_busy(self) -> None:
        if self._busy:
            raise DynodError(
                "a trace is running: one trace at a time (the kernel's trace events are shared)",
                "wait for it to finish (a second or so), then trace again",
                status=409,
            )

    async def _run(self, request: TraceRequest, ends: Ends) -> Report:
        router, user = ends.source.kind == "router", self.kernel.layout.router_user
        plan = tracing.ProbePlan(
            protocol=request.protocol,
            dst=ends.target.address or "",
            dport=ends.port,
            src_netns=ends.source.netns,
            src=ends.source.address if ends.source.kind == "dyno" else None,
            dst_netns=ends.target.netns,
            # as the router sends: from a socket of its workers' user, or one with its mark
            mark=self.kernel.layout.router_mark if router and user is None else 0,
            user=user if router else None,
        )
        worker = self.kernel.worker
        opened: tracing.Opened | None = None
        try:
            try:
                opened = await worker.run(tracing.open_trace, self.kernel.machine, plan)
            except FileNotFoundError:
                raise DynodError(
                    "a dyno of the trace stopped while it was being set up",
                    "check `dynod ps`, then trace again",
                ) from None
            outcome = await probe(opened, plan, request.wait)
            await asyncio.sleep(SETTLE)
            events = {place: watch.read() for place, watch in opened.watches}
            lost = any(watch.lost for _, watch in opened.watches)
            listings = await worker.run(tracing.listings, plan.places())
            return self._report(ends, plan, opened, outcome, events, listings, lost)
        finally:
            # shielded: a second cancellation must not cancel the removal itself
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    worker.run(tracing.close_trace, self.kernel.machine, plan, opened)
                )

    def _report(
        self,
        ends: Ends,
        plan: tracing.ProbePlan,
        opened: tracing.Opened,
        outcome: str,
        events: dict[str | None, list[TraceEvent]],
        listings: dict[str | None, str],
        lost: bool,
    ) -> Report:
        def label(place: str | None) -> str:
            if place is None:
                return "host"
            end = ends.source if place == plan.src_netns else ends.target
            return f"{end.label} (netns {place})"

        places = [
            Place(label(p), events.get(p, []), parse_listing(listings.get(p, "")))
            for p in plan.places()
        ]
        path = steps(places, opened.flow, tracing.table_name(self.kernel.machine))
        # the host's routing picked the source: the traced packet says which
        seen = (e.packet for found in events.values() for e in found if e.packet is not None)
        carried = next((p.src for p in seen if opened.flow.carries(p)), None)
        src = opened.flow.src or carried or _bound_address(opened.probe)
        return Report(
            source=ends.source.label,
            target=ends.target.label,
            protocol=plan.protocol,
            src=src,
            dst=plan.dst,
            sport=opened.flow.sport,
            dport=opened.flow.dport,
            probe=outcome,
            steps=path,
            verdict=verdict(path, places[-1].label, self.kernel.layout.table),
            lost=lost,
        )


def _answer(task: asyncio.Future[Report]) -> Mapping[str, object]:
    exc = task.exception()
    if isinstance(exc, DynodError):
        return exc.to_json()
    if exc is not None:
        return {"error": f"the trace failed: {exc!r}", "fix": "see the daemon's log"}
    return {"report": task.result().to_json()}


def _bound_address(sock: socket.socket) -> str:
    with contextlib.suppress(OSError):
        return str(sock.getsockname()[0])
    return "?"


# ---------------------------------------------------------------- the probe itself
async def probe(opened: tracing.Opened, plan: tracing.ProbePlan, wait: float) -> str:
    """Send the one probe and say what came back: a TCP connect, a UDP datagram, an ICMP echo."""
    sock, dst, port = opened.probe, plan.dst, plan.dport or 0
    loop = asyncio.get_running_loop()
    no_answer = f"no answer within {wait:g} s"
    try:
        if plan.protocol == "tcp":
            await asyncio.wait_for(loop.sock_connect(sock, (dst, port)), wait)
            return "connected"
        if plan.protocol == "udp":
            sock.connect((dst, port))
            await loop.sock_sendall(sock, PAYLOAD)
            await asyncio.wait_for(loop.sock_recv(sock, 2048), wait)
            return "an answer came back"
        await loop.sock_sendto(sock, echo_request(opened.flow.icmp_id or 0), (dst, 0))
        return await asyncio.wait_for(_echo_answer(sock, opened.flow.icmp_id or 0), wait)
    except TimeoutError:
        return no_answer
    except ConnectionRefusedError:
        if plan.protocol == "tcp":
            return "refused: a TCP reset came back (nothing listens on that port)"
        return "port unreachable came back (nothing listens on that port)"
    except OSError as exc:
        return f"failed: {exc.strerror or exc}"


def echo_request(ident: int, sequence: int = 1) -> bytes:
    """An ICMP echo request (type 8) with its checksum."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
    checksum = _checksum(header + PAYLOAD)
    return struct.pack("!BBHHH", 8, 0, checksum, ident, sequence) + PAYLOAD


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


async def _echo_answer(sock: socket.socket, ident: int) -> str:
    """What came back for our echo request (a raw socket sees every ICMP message: ours are
    told apart by the id, also inside an error's quoted header)."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(sock, 2048)
        header = (data[0] & 0x0F) * 4 if data else 0
        icmp = data[header:]
        if len(icmp) < 8:
            continue
        kind = icmp[0]
        if kind == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            return "echo reply"
        if kind == 3 and len(icmp) >= 8 + 28:
            inner = icmp[8:]
            quoted = inner[(inner[0] & 0x0F) * 4 :]
            if len(quoted) >= 6 and struct.unpack("!H", quoted[4:6])[0] == ident:
                return "destination unreachable came back"
