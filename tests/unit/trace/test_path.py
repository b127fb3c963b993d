# ruff: noqa: E501  (the listing is nft's own output, one rule a line)
"""A traced packet's path from trace events and `nft -a -t list ruleset`, its verdict and
reason, and the report's text."""

from __future__ import annotations

from dynod.trace.path import (
    Place,
    Report,
    Step,
    format_report,
    parse_listing,
    steps,
    verdict,
)
from netns.nftrace import Flow, Packet, TraceEvent

LISTING = """table bridge dynod { # handle 2
\tset ports { # handle 4
\t\ttype ifname . ether_addr . ipv4_addr
\t}

\tchain prerouting { # handle 1
\t\ttype filter hook prerouting priority filter; policy accept;
\t\tiifname "dynod-*" jump from_dyno comment "a frame from a dyno's port: check its source" # handle 5
\t}

\tchain from_dyno { # handle 2
\t\tiifname . ether saddr . ip saddr @ports accept comment "the dyno's own MAC and IP" # handle 6
\t}
}
table inet dynod { # handle 4
\tmap nat { # handle 11
\t\ttype ipv4_addr : ipv4_addr
\t\tflags interval
\t}

\tchain forward { # handle 4
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname "dynod-*" counter packets 0 bytes 0 drop comment "second lock: a dyno port routed anywhere" # handle 18
\t\tiifname "dynod0" oifname "dynod0" counter packets 3 bytes 180 drop comment "dyno to dyno in the Common Runtime" # handle 24
\t}
}
table inet dynod-trace { # handle 9
\tchain prerouting { # handle 1
\t\ttype filter hook prerouting priority -400; policy accept;
\t\tip daddr 172.16.0.10 tcp sport 40000 tcp dport 8080 limit rate 1/hour burst 1 packets meta nftrace set 1 # handle 2
\t}
}
"""

FLOW = Flow("tcp", "172.16.0.10", "172.16.0.6", 40000, 8080)
OURS = Packet("172.16.0.6", "172.16.0.10", "tcp", 1, 40000, 8080)
OTHER = Packet("172.16.0.6", "172.16.0.10", "tcp", 1, 40001, 8080)


def event(
    id_: int, family: str, table: str, chain: str, kind: str, verdict_: str, **kw: object
) -> TraceEvent:
    return TraceEvent(id_, family, table, chain, kind, verdict_, **kw)  # type: ignore[arg-type]


def test_the_listing_gives_hooks_policies_and_rules_by_handle() -> None:
    listing = parse_listing(LISTING)
    forward = listing[("inet", "dynod", "forward")]
    assert (forward.hook, forward.policy) == ("forward", "accept")
    rule = forward.rules[24]
    assert rule.position == 2
    assert rule.text.startswith('iifname "dynod0" oifname "dynod0" counter drop comment')
    assert rule.comment == "dyno to dyno in the Common Runtime"
    assert listing[("bridge", "dynod", "from_dyno")].hook is None  # reached by a jump
    assert ("inet", "dynod", "nat") not in listing  # a map is no chain


def dropped_path() -> list[Step]:
    host = [
        event(1, "inet", "dynod-trace", "prerouting", "rule", "continue", handle=None, packet=OURS),
        event(1, "inet", "dynod-trace", "prerouting", "rule", "continue", handle=2),
        event(1, "inet", "dynod-trace", "prerouting", "policy", "accept"),
        event(9, "inet", "dynod", "forward", "rule", "drop", handle=24, packet=OTHER),
        event(1, "bridge", "dynod", "prerouting", "rule", "jump", target="from_dyno", handle=5),
        event(1, "bridge", "dynod", "from_dyno", "rule", "accept", handle=6),
        event(1, "inet", "dynod", "forward", "rule", "drop", handle=24),
    ]
    return steps([Place("host", host, parse_listing(LISTING))], FLOW, "dynod-trace")


def test_the_path_keeps_the_flows_packets_and_the_rules_they_met() -> None:
    path = dropped_path()
    assert [(s.table, s.chain, s.verdict) for s in path] == [
        ("dynod-trace", "prerouting", "continue"),  # entering note and policy left out
        ("dynod", "prerouting", "jump"),
        ("dynod", "from_dyno", "accept"),
        ("dynod", "forward", "drop"),  # another packet's drop (id 9) is not ours
    ]
    assert path[2].hook == "prerouting"  # a jumped-to chain walks its caller's hook
    assert path[3].hook == "forward" and path[3].position == 2


def test_dropped_with_the_rules_own_reason() -> None:
    found = verdict(dropped_path(), "host", "dynod")
    assert found.outcome == "dropped"
    assert found.reason == (
        "dropped: dyno to dyno in the Common Runtime (table inet dynod, chain forward, rule 2)"
    )


def test_accepted_by_dynods_own_rule_and_not_at_all() -> None:
    accept = Step("host", "output", "inet", "dynod", "output", "rule", "accept", comment="why")
    other = Step("host", "output", "inet", "other", "output", "rule", "accept", comment="no")
    nat = Step("host", "postrouting", "inet", "dynod", "postrouting", "rule", "accept")
    found = verdict([accept, other, nat], "host", "dynod")
    assert found == verdict([accept], "host", "dynod")
    assert found.reason == "accepted: why (table inet dynod, chain output)"
    assert verdict([other], "host", "dynod").reason.startswith("accepted: no rule refused it")
    assert verdict([], "host", "dynod").outcome == "unknown"
    assert "never reached sushi/web.1" in verdict([accept], "sushi/web.1", "dynod").reason


def test_the_report_as_text_and_json() -> None:
    path = dropped_path()
    report = Report(
        "sushi/web.1",
        "sushi/worker.1",
        "tcp",
        "172.16.0.6",
        "172.16.0.10",
        40000,
        8080,
        "no answer within 1 s",
        path,
        verdict(path, "host", "dynod"),
    )
    assert Report.from_json(report.to_json()) == report
    text = format_report(report).splitlines()
    assert (
        text[0] == "trace tcp 172.16.0.6:40000 -> 172.16.0.10:8080 (sushi/web.1 -> sushi/worker.1)"
    )
    assert text[1] == "host:"
    assert text[2] == "  prerouting  inet dynod-trace prerouting: tracing on"
    assert text[4].startswith("  prerouting  bridge dynod from_dyno rule 1 [handle 6]: iifname")
    assert text[4].endswith("-> accept")
    assert (
        text[-2]
        == "result: sushi/web.1 -> sushi/worker.1 tcp 8080: dropped (probe: no answer within 1 s)"
    )
    assert text[-1].startswith("dropped: dyno to dyno in the Common Runtime")
