"""A traced packet's path, from the trace events of each namespace it passed and that
namespace's ruleset (`nft -a -t list ruleset`, for each rule's text): each hook, table, chain
and rule it met, the verdict, and the reason. The reason is the deciding rule's own comment
(dynod's fixed rules each carry one, kernel/firewall.py), never a second copy of the policy.
Pure functions: the daemon builds a Report, the CLI prints it (format_report)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from netns.nftrace import Flow, TraceEvent

TABLE = re.compile(r"^table (\S+) (\S+) \{")
CHAIN = re.compile(r"^chain (\S+) \{")
BASE = re.compile(r"^type \S+ hook (\S+) priority ([^;]+);(?: policy (\w+);)?")
HANDLE = re.compile(r"^(.*?)\s*# handle (\d+)$")
COMMENT = re.compile(r'comment "((?:[^"\\]|\\.)*)"')
COUNTER = re.compile(r"counter packets \d+ bytes \d+")


@dataclass(frozen=True)
class Rule:
    position: int  # 1 for a chain's first rule, as `nft list` shows them
    handle: int
    text: str

    @property
    def comment(self) -> str:
        found = COMMENT.search(self.text)
        return found.group(1) if found else ""


@dataclass
class Chain:
    hook: str | None = None  # None: a regular chain, reached by a jump or goto
    policy: str = ""
    rules: dict[int, Rule] = field(default_factory=dict)


Listing = dict[tuple[str, str, str], Chain]  # (family, table, chain) -> its hook and rules


def parse_listing(text: str) -> Listing:
    """`nft -a -t list ruleset` text: each chain's hook and policy, and its rules by handle."""
    found: Listing = {}
    table: tuple[str, str] | None = None
    chain: Chain | None = None
    depth = 0  # braces open inside the table: a set's block, a chain's block
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if depth == 0 and (m := TABLE.match(line)):
            table, depth = (m.group(1), m.group(2)), 1
            continue
        if table is None:
            continue
        if depth == 1 and (m := CHAIN.match(line)):
            chain = found.setdefault((*table, m.group(1)), Chain())
            depth = 2
            continue
        if line == "}":
            depth -= 1
            if depth <= 1:
                chain = None
            if depth == 0:
                table = None
            continue
        if line.endswith("{") or line.split(" # ")[0].endswith("{"):
            depth += 1  # a set, map or other object: nothing of the path's
            continue
        if chain is None or depth != 2:
            continue
        if m := BASE.match(line):
            chain.hook, chain.policy = m.group(1), m.group(3) or "accept"
        elif m := HANDLE.match(line):
            text_ = COUNTER.sub("counter", m.group(1))
            chain.rules[int(m.group(2))] = Rule(len(chain.rules) + 1, int(m.group(2)), text_)
    return found


@dataclass(frozen=True)
class Step:
    """One thing the packet met: a rule that matched (and its verdict), or a chain's policy."""

    place: str  # where: a dyno's name, or "host"
    hook: str
    family: str
    table: str
    chain: str
    kind: str  # "rule", "policy", "return"
    verdict: str
    target: str = ""  # a jump's or goto's chain
    position: int | None = None
    handle: int | None = None
    rule: str = ""  # the rule's text, as `nft list` shows it
    comment: str = ""
    tracing: bool = False  # one of the trace's own tables

    def where(self) -> str:
        rule = f", rule {self.position}" if self.position is not None else ""
        return f"table {self.family} {self.table}, chain {self.chain}{rule}"


@dataclass(frozen=True)
class Place:
    """One namespace the probe passed: its name for the reader, its events and ruleset."""

    label: str
    events: Sequence[TraceEvent]
    listing: Listing


def steps(places: Sequence[Place], flow: Flow, trace_table: str) -> list[Step]:
    """The flow's path through every place, in order; events of other packets (another
    trace running in the same namespace) are left out by their headers."""
    path: list[Step] = []
    for place in places:
        ours = {e.id for e in place.events if e.packet is not None and flow.carries(e.packet)}
        hooks: dict[tuple[str, str], str] = {}  # (family, table) -> the hook now being walked
        for event in place.events:
            if event.id not in ours:
                continue
            step = _step(place, event, hooks, trace_table)
            # A rule event without a rule is the kernel's note that a base chain was entered:
            # its hook shows in the steps that follow.
            if not (event.kind == "rule" and event.handle is None):
                path.append(step)
    return _collapse(path)


def _step(
    place: Place, event: TraceEvent, hooks: dict[tuple[str, str], str], trace_table: str
) -> Step:
    chain = place.listing.get((event.family, event.table, event.chain), Chain())
    key = (event.family, event.table)
    if chain.hook is not None:
        hooks[key] = chain.hook
    rule = chain.rules.get(event.handle) if event.handle is not None else None
    text = rule.text if rule else ""
    if event.handle is not None and rule is None:
        text = "(no longer in the ruleset)"
    return Step(
        place=place.label,
        hook=hooks.get(key, "?"),
        family=event.family,
        table=event.table,
        chain=event.chain,
        kind=event.kind,
        verdict=event.verdict,
        target=event.target,
        position=rule.position if rule else None,
        handle=event.handle if event.kind == "rule" else None,
        rule=text,
        comment=rule.comment if rule else "",
        tracing=event.table == trace_table,
    )


def _collapse(path: list[Step]) -> list[Step]:
    """A trace table's policy right after its own tracing rule says nothing new."""
    kept: list[Step] = []
    for step in path:
        last = kept[-1] if kept else None
        if (
            step.tracing
            and step.kind == "policy"
            and last is not None
            and last.tracing
            and (last.place, last.family, last.chain) == (step.place, step.family, step.chain)
        ):
            continue
        kept.append(step)
    return kept


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "accepted", "dropped", "unknown"
    reason: str


def verdict(path: Sequence[Step], last_place: str, own_table: str) -> Verdict:
    """Dropped at the first drop; otherwise accepted once the packet reached the last place it
    was sent to (TO's namespace, or the host), for the reason of the last rule of dynod's own
    tables that accepted it (another table's accept, or a NAT rule, decides nothing here)."""
    for step in path:
        if step.verdict == "drop" and not step.tracing:
            if step.kind == "rule":
                why = step.comment or "a rule without a comment (not one of dynod's)"
            else:
                why = f"the chain's policy is {step.verdict}"
            return Verdict("dropped", f"dropped: {why} ({step.where()})")
    if not path:
        return Verdict("unknown", "no trace event came: the packet met no hook (no route?)")
    if all(step.place != last_place for step in path):
        return Verdict(
            "unknown",
            f"no rule dropped it, yet it never reached {last_place} (no route or no ARP answer?)",
        )
    for step in reversed(path):
        if (
            step.verdict == "accept"
            and step.kind == "rule"
            and step.table == own_table
            and step.hook != "postrouting"
        ):
            return Verdict("accepted", f"accepted: {step.comment} ({step.where()})")
    return Verdict("accepted", "accepted: no rule refused it (every chain it met accepts)")


# ---------------------------------------------------------------- the report
@dataclass(frozen=True)
class Report:
    """What the daemon answers: the probe, its path, its outcome."""

    source: str  # FROM as the reader knows it: sushi/web.1, host, router
    target: str
    protocol: str
    src: str  # addresses and ports, as sent
    dst: str
    sport: int | None
    dport: int | None
    probe: str  # what the probe saw: "connected", "no answer within 1 s", ...
    steps: list[Step]
    verdict: Verdict
    lost: bool = False  # the kernel dropped trace events: the path may miss steps

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        fields = dict(data)
        fields["steps"] = [Step(**s) for s in data["steps"]]
        fields["verdict"] = Verdict(**data["verdict"])
        return cls(**fields)


def _end(address: str, port: int | None) -> str:
    return f"{address}:{port}" if port is not None else address


def format_report(report: Report) -> str:
    """The path as lines a person reads: one per step, grouped by place."""
    port = f" {report.dport}" if report.dport is not None else ""
    lines = [
        f"trace {report.protocol} {_end(report.src, report.sport)} -> "
        f"{_end(report.dst, report.dport)} ({report.source} -> {report.target})",
    ]
    place = None
    for step in report.steps:
        if step.place != place:
            place = step.place
            lines.append(f"{place}:")
        lines.append(f"  {step.hook:<11} {_describe(step)}")
    if report.lost:
        lines.append("(the kernel dropped some trace events: steps may be missing)")
    lines.append(
        f"result: {report.source} -> {report.target} {report.protocol}{port}: "
        f"{report.verdict.outcome} (probe: {report.probe})"
    )
    lines.append(report.verdict.reason)
    return "\n".join(lines)


def _describe(step: Step) -> str:
    where = f"{step.family} {step.table} {step.chain}"
    if step.tracing:
        return f"{where}: tracing on" if step.kind == "rule" else f"{where}: passed"
    if step.kind != "rule":
        return f"{where}: {step.kind} {step.verdict}"
    verdict = f"{step.verdict} {step.target}".strip()
    return f"{where} rule {step.position} [handle {step.handle}]: {step.rule} -> {verdict}"
