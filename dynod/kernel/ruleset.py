"""The firewall on the host: the whole ruleset applied in one transaction, the record of what
our tables should hold, the check that they still do, and its restoration (kernel thread)."""

from __future__ import annotations

from dynod.kernel import firewall, shards, sweep
from dynod.kernel.facts import DynoNetwork
from dynod.kernel.machine import Machine, Net
from netns import addresses, conntrack, nfevents
from netns.nftables import Nft, Snapshot, element_key, set_elements, snapshot

# Whole applies tried again when someone else committed between ours and the reading back of
# the record (_record() below); the last one's reading is taken as it is.
ATTEMPTS = 3


def apply(m: Machine, live: list[DynoNetwork]) -> None:
    """`nft -f RULESET`: every table, chain, rule and element, replacing what is there."""
    # At start-up spaces are opened one by one: a dyno of one not opened yet waits for it.
    live = [n for n in live if m.is_open(n.bridge)]
    for dyno in live:  # every shard a dyno is on is in the ruleset written below
        shards.open_shard(m, dyno)
    web = [n.web for n in live if n.web is not None]
    text = firewall.ruleset(m.layout, [n.port for n in live], web)
    for attempt in range(ATTEMPTS):
        before = _generation()
        m.nftables().run(text)
        if _record(m, before, last=attempt == ATTEMPTS - 1):
            break
    # The ports' own settings (network.close_port_to_host) are not the firewall's: they live
    # with each veth, are written where it is made and at reconcile (sweep.restore_gateways),
    # and no ruleset change undoes them. Writing them here cost 2 writes per live dyno on
    # every whole re-apply (8,000 at 4,000 dynos), and as many recorded commands.


def add_shard(m: Machine, net: Net, bridge: str) -> None:
    """A new shard's elements in our sets, in one transaction. The guard's record of those
    sets is taken again when they held what it says and nobody else committed since they were
    read; else it is left as it was (or unknown), and the guard restores our tables whole, this
    shard too. Only those sets are read (`bridges`, `services`...: elements per shard), not the
    tables, whose every dyno's elements made each reading grow with the dynos (twice per new
    shard: 28-38 ms at 1,000 dynos, 70-220 ms at 3,000-4,000; bench/README.md, "Ninth round")."""
    text = firewall.add_shard(m.layout, net.firewall(), bridge)
    before = _generation()  # before the sets are read: a commit after it is someone's
    record, sets = m.expected, _sets_in(text, m.layout.table)
    if record is None or sets is None:  # never applied yet, or not elements alone
        held = intact(m)  # the whole tables, as before
        m.nftables().run(text)
        if held:
            _record(m, before, last=False)
        return
    held = _sets_hold(m, record, sets)
    m.nftables().run(text)
    if held:
        _record_sets(m, record, sets, before)


def _sets_in(text: str, table: str) -> list[tuple[str, str]] | None:
    """(family, set) of each `add element FAMILY TABLE SET {...}` line, once each; None when
    a line is anything else (a rule, a set of its own: the structure changes too)."""
    found: dict[tuple[str, str], None] = {}
    for line in text.splitlines():
        words = line.split(maxsplit=5)
        if len(words) < 6 or words[:2] != ["add", "element"] or words[3] != table:
            return None
        found[(words[2], words[4])] = None
    return list(found)


def _sets_hold(m: Machine, record: Snapshot, sets: list[tuple[str, str]]) -> bool:
    """Each set holds what the record says it does (a set the record lacks: no)."""
    return all(
        set_elements(m.nftables(), family, m.layout.table, name)
        == record.elements.get(f"{family} {name}")
        for family, name in sets
    )


def _record_sets(
    m: Machine, record: Snapshot, sets: list[tuple[str, str]], before: int | None
) -> None:
    """_record() for those sets only: their reading becomes the record's when our commit was
    the only one since generation `before`; else the record is unknown (a restore follows)."""
    found = {
        f"{family} {name}": set_elements(m.nftables(), family, m.layout.table, name)
        for family, name in sets
    }
    after = _generation()
    alone = before is None or after is None or after == nfevents.next_generation(before)
    read = {key: elements for key, elements in found.items() if elements is not None}
    if alone and len(read) == len(found):
        record.elements.update(read)
    else:
        m.expected = Snapshot()


def _record(m: Machine, before: int | None, last: bool) -> bool:
    """Read our tables back as the guard's record of what they hold, after our one commit since
    generation `before`. True when nobody else committed meanwhile (the generation moved by
    one). Else a missing table, or any reading but the last attempt's, leaves the record
    unknown (an empty one, which no table matches): a table someone deleted right after our
    commit must not become "what they should hold" (it left no record at all, and the guard
    blind). The last attempt's reading is taken: a host whose firewall commits all the time
    must not make every later commit of theirs a restore."""
    found = snapshot(m.nftables(), tables(m))
    after = _generation()
    # where the kernel would not say, the reading is trusted
    alone = before is None or after is None or after == nfevents.next_generation(before)
    if found is not None and (alone or last):
        m.expected = found
        return True
    m.expected = Snapshot()
    return False


def _generation() -> int | None:
    try:
        return nfevents.generation()
    except OSError:
        return None


def tables(m: Machine) -> list[tuple[str, str]]:
    return [("bridge", m.layout.table), ("inet", m.layout.table)]


def expect(m: Machine, dyno: DynoNetwork, present: bool) -> None:
    """Record what a successful transaction did to the per-dyno sets."""
    if m.expected is None:
        return
    change = m.expected.add if present else m.expected.discard
    change("bridge", "ports", element_key(firewall.port_value(dyno.port)))
    if dyno.web is not None:
        change("inet", "web", element_key(firewall.web_value(dyno.web)))


def move_web(m: Machine, old: firewall.WebTarget, new: firewall.WebTarget) -> None:
    """One transaction: the old web element out, the new one in."""
    m.nftables().run(firewall.close_web(m.layout, old) + firewall.open_web(m.layout, new))
    if m.expected is not None:
        m.expected.discard("inet", "web", element_key(firewall.web_value(old)))
        m.expected.add("inet", "web", element_key(firewall.web_value(new)))


def intact(m: Machine) -> bool:
    """`nft list table ...` equals what we put there, every rule and element."""
    if m.expected is None:
        return True  # never applied yet: nothing to compare with
    return snapshot(m.nftables(), tables(m)) == m.expected


def restore(m: Machine, live: list[DynoNetwork]) -> int:
    """apply(), the ports' own settings again, then `conntrack -D` the tracked flows the
    firewall refuses; how many. The guard comes here when someone changed our tables, rarely:
    whoever did may have changed host sysctls too (`net.ipv6.conf.all.disable_ipv6=0` reaches
    every port), so the ports' settings are written again here, never on a start's apply."""
    apply(m, live)
    for dyno in live:
        sweep.close_port(m.worker.rtnl, dyno.veth)
    web = {n.web for n in live if n.web is not None}
    local = addresses.local_ipv4(m.worker.ipr, m.worker.rtnl.routes())
    layout = m.layout
    return conntrack.delete_where(lambda flow: firewall.refused(layout, web, local, flow))


def foreign_drop_policies(nft: Nft, own_table: str) -> list[str]:
    """Base chains of other tables that drop by default on forward or input.

    An accept in dynod's table cannot override a drop in another table (each table's chains
    see the packet), so such a host firewall silently breaks dyno traffic: say so at start-up.
    """
    found = []
    for item in nft.ruleset():
        chain = item.get("chain")
        if not chain or chain.get("table") == own_table:
            continue
        if chain.get("hook") in ("forward", "input") and chain.get("policy") == "drop":
            found.append(
                f"table {chain['family']} {chain['table']} chain {chain['name']} drops "
                f"{chain['hook']} traffic by default; dyno traffic it does not accept is dropped "
                "whatever dynod allows"
            )
    return found
