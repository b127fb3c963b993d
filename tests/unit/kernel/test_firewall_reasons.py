"""Every fixed rule of dynod's firewall carries its reason as a comment: what `dynod trace`
prints as the verdict's reason, and what `nft list ruleset` shows a reader."""

from __future__ import annotations

from dynod.kernel import firewall

LAYOUT = firewall.Layout(
    table="dynod",
    port_glob="dynod-*",
    common=firewall.Network("dynod0", "172.16.0.0/12", "172.16.0.1"),
    spaces=(firewall.Network("dynods1", "10.1.0.0/16", "10.1.0.1", "192.0.2.10"),),
)


def rules(text: str) -> list[str]:
    """Each rule of each chain, its continuation lines joined."""
    found: list[str] = []
    in_chain = False
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            in_chain = True
            continue
        if not in_chain or not line or line.startswith("#") or line.startswith("type "):
            continue
        if line == "}":
            in_chain = False
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            found.append(pending.strip())
            pending = ""
    return found


def test_every_fixed_rule_has_a_reason() -> None:
    found = rules(firewall.ruleset(LAYOUT))
    assert len(found) >= 20  # the parse saw the rules (both tables)
    missing = [rule for rule in found if 'comment "' not in rule]
    assert missing == []


def test_the_reasons_tell_the_paths_apart() -> None:
    comments = [rule.split('comment "', 1)[1] for rule in rules(firewall.ruleset(LAYOUT))]
    assert len(set(comments)) == len(comments) - 2  # "replies within ..." is said three times
    assert any(c.startswith("dyno to dyno in the Common Runtime") for c in comments)
    assert any(c.startswith("dyno to dyno in the same Private Space, on ports") for c in comments)


def test_a_rule_without_a_comment_is_seen() -> None:
    assert rules("chain x {\n  type filter hook input priority 0;\n  ip saddr 1.2.3.4 drop\n}") == [
        "ip saddr 1.2.3.4 drop"
    ]
