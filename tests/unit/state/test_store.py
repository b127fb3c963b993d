"""The SQLite state's migrations (dynod/state/store.py). No root needed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from dynod.state.store import SCHEMA, SCHEMA_VERSION, App, State

V1_SCHEMA = """
CREATE TABLE apps (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE dynos (
    id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL REFERENCES apps(name),
    type TEXT NOT NULL, number INTEGER NOT NULL, state TEXT NOT NULL,
    slot INTEGER NOT NULL UNIQUE, ip TEXT NOT NULL, port INTEGER, pid INTEGER, pid_start REAL,
    netns TEXT NOT NULL UNIQUE, veth TEXT NOT NULL UNIQUE, command TEXT NOT NULL,
    cwd TEXT NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, env TEXT NOT NULL,
    detached INTEGER NOT NULL, restarts INTEGER NOT NULL DEFAULT 0, log_path TEXT NOT NULL,
    log_offset INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
    UNIQUE (app, type, number));
CREATE TABLE draining (slot INTEGER PRIMARY KEY, veth TEXT NOT NULL);
INSERT INTO apps VALUES ('sushi', 1.0);
INSERT INTO dynos (id, app, type, number, state, slot, ip, port, netns, veth, command, cwd, uid,
    gid, env, detached, log_path, created_at)
  VALUES (7, 'sushi', 'web', 1, 'up', 1, '172.16.0.6', 3000, 'dynod-sushi.web.1', 'dynod-7',
    'x', '/', 1000, 1000, '{}', 1, '/tmp/x', 1.0);
INSERT INTO draining VALUES (2, 'dynod-9');
UPDATE sqlite_sequence SET seq = 9 WHERE name = 'dynos';
"""


def test_an_issue_2_state_is_upgraded_without_losing_a_dyno(tmp_path) -> None:
    import sqlite3

    from dynod.state.store import State

    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(V1_SCHEMA)
    db.close()
    state = State(str(tmp_path))
    try:
        (dyno,) = state.dynos()
        assert (dyno.id, dyno.name, dyno.space, dyno.slot) == (7, "web.1", "", 1)
        app = state.app("sushi")
        assert app is not None and app.space == "" and not app.dns_discovery
        assert state.draining() == {("", 2): "dynod-9"}
        assert state.next_dyno_id() == 10  # no veth name is handed out twice
        assert state.slots_unavailable("") == {1, 2} and state.slots_unavailable("acme") == set()
    finally:
        state.close()
    State(str(tmp_path)).close()  # opening it again changes nothing


def test_state_v2_gains_sizes(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    v4 = SCHEMA.split("CREATE TABLE IF NOT EXISTS formation")[0]
    v4 = v4.replace("DEFAULT 0,\n    dir ", "DEFAULT 0\n    -- dir ")  # no app directory yet
    old_schema = "\n".join(
        line
        for line in v4.splitlines()
        if "size " not in line and "formation " not in line and "inherited " not in line
    )
    db.executescript(old_schema)
    db.execute("INSERT INTO apps (name, created_at) VALUES ('a', 0)")
    db.execute(
        "INSERT INTO dynos (app, type, number, state, slot, ip, netns, veth, command, cwd, uid, "
        "gid, env, detached, log_path, created_at) VALUES ('a', 'web', 1, 'up', 1, '10.0.0.2', "
        "'d-a.web.1', 'd-1', 'x', '/', 1, 1, '{}', 1, '/o', 0)"
    )
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    state = State(str(tmp_path))
    try:
        (dyno,) = state.dynos()
        assert dyno.size == ""  # a dyno from before sizes keeps running without limits
        state.update_dyno(dyno, size="eco")
        assert state.dynos()[0].size == "eco"
        assert state.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert state.config_vars("a") == {}  # the config var table came with the upgrade
    finally:
        state.close()


def test_config_vars_change_in_one_release_and_go_with_their_app(tmp_path: Path) -> None:
    state = State(str(tmp_path))
    try:
        state.add_app(App("a"))
        state.add_app(App("b"))
        assert state.release("a") == 1
        assert state.change_config("a", {"A": "1", "PEM": "x\ny=z"}) == 2
        state.change_config("b", {"A": "other"})
        assert state.change_config("a", {"A": None, "B": ""}) == 3
        assert state.config_vars("a") == {"B": "", "PEM": "x\ny=z"}
        assert state.config_vars("b") == {"A": "other"}
        state.remove_app("a")
        assert (state.config_vars("a"), state.release("a")) == ({}, 1)
        assert state.config_vars("b") == {"A": "other"}
    finally:
        state.close()


def test_a_version_4_state_gains_the_config_var_tables(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    v4 = SCHEMA.split("CREATE TABLE IF NOT EXISTS formation")[0]
    v4 = v4.replace("DEFAULT 0,\n    dir ", "DEFAULT 0\n    -- dir ")  # no app directory yet
    db.executescript(
        "\n".join(
            line
            for line in v4.splitlines()
            if "formation " not in line and "inherited " not in line
        )
    )
    db.execute("INSERT INTO apps (name, created_at) VALUES ('a', 0)")
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    state = State(str(tmp_path))
    try:
        assert state.change_config("a", {"A": "1"}) == 2
        assert state.config_vars("a") == {"A": "1"}
        assert state.formation("a") == []  # and the formation's
        assert state.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        state.close()


def test_a_dynos_json_has_every_field_but_its_environment() -> None:
    """What `dynod ps` and the API show of a dyno: each field as stored (in field order), its
    name and uptime, never its environment (it holds the config vars' secrets)."""
    import dataclasses

    from dynod.state.store import Dyno

    dyno = Dyno(
        id=7, app="sushi", type="web", number=2, state="up", slot=3, ip="10.1.0.14",
        port=5000, pid=42, pid_start=1.5, netns="ns", veth="v", command="run", cwd="/app",
        uid=1000, gid=1000, env={"SECRET": "x"}, started_at=100.0, size="basic",
        inherited={"TZ": "Europe/Paris"},
    )  # fmt: skip
    shown = dyno.to_json()
    hidden = ("env", "inherited")
    expected = {k: v for k, v in dataclasses.asdict(dyno).items() if k not in hidden}
    assert list(shown)[: len(expected)] == list(expected)
    assert {k: shown[k] for k in expected} == expected
    assert shown["name"] == "web.2" and shown["uptime"] > 0 and "env" not in shown
    assert "SECRET" not in str(shown) and "Paris" not in str(shown)


def test_a_version_5_dyno_gains_an_empty_inherited_environment(tmp_path: Path) -> None:
    """A `dynod run` dyno's `env` (the caller's PATH... and run -e's, as they were) stays whole:
    it starts as before. A formation dyno's was only the caller's (a scale copied it): it moves
    to `inherited`, under the config vars, as a scale makes it now."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("\n".join(line for line in SCHEMA.splitlines() if "inherited " not in line))
    db.execute("INSERT INTO apps (name, created_at) VALUES ('a', 0)")
    for number, formation in ((1, 0), (2, 1)):
        db.execute(
            "INSERT INTO dynos (app, type, number, state, slot, ip, netns, veth, command, cwd, "
            "uid, gid, env, detached, log_path, created_at, formation) VALUES ('a', 'web', ?, "
            """'up', ?, ?, ?, ?, 'x', '/', 1, 1, '{"PATH": "/p"}', 1, '/o', 0, ?)""",
            (
                number,
                number,
                f"10.0.0.{4 * number + 2}",
                f"d-a.web.{number}",
                f"d-{number}",
                formation,
            ),
        )
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()
    state = State(str(tmp_path))
    try:
        dyno, formed = state.dynos()
        assert (dyno.env, dyno.inherited) == ({"PATH": "/p"}, {})
        assert (formed.env, formed.inherited) == ({}, {"PATH": "/p"})
        state.update_dyno(dyno, inherited={"TZ": "UTC"})
        assert state.dynos()[0].inherited == {"TZ": "UTC"}
        assert state.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        state.close()


def test_dense_numbers_and_slots_agree_with_the_lists(tmp_path: Path) -> None:
    """The index-only answers a start uses (dense_numbers, dense_slots) never differ from what
    the full lists say, over random starts, stops and drains in two networks."""
    import random

    from dynod.rules.names import lowest_free_number

    rng = random.Random(11)
    state = State(str(tmp_path))
    try:
        state.add_app(App("sushi"))
        live: dict[int, tuple[str, int, int]] = {}  # id -> (space, number, slot)
        next_id = 0
        for _ in range(400):
            space = rng.choice(["", "acme"])
            if live and rng.random() < 0.35:
                dyno_id = rng.choice(list(live))
                row = state.dyno(dyno_id)
                assert row is not None
                state.remove_dyno(row)
                del live[dyno_id]
                if rng.random() < 0.5:
                    state.drained(list(state.draining()))
            else:
                taken = state.numbers_taken("sushi", space or "web")
                dense = state.dense_numbers("sushi", space or "web")
                assert dense is None or taken == set(range(1, dense + 1))
                number = lowest_free_number(taken)
                if dense is not None:
                    assert number == dense + 1
                slots = state.slots_unavailable(space)
                top = state.dense_slots(space)
                assert top is None or slots == set(range(1, top + 1))
                slot = min(set(range(1, 2 + len(slots))) - slots)
                next_id += 1
                state.db.execute(
                    "INSERT INTO dynos (app, space, type, number, state, slot, ip, netns, veth,"
                    " command, cwd, uid, gid, env, detached, log_path, created_at) VALUES"
                    " ('sushi', ?, ?, ?, 'up', ?, 'x', ?, ?, 'c', '/', 1, 1, '{}', 1, 'l', 0)",
                    (space, space or "web", number, slot, f"n{next_id}", f"v{next_id}"),
                )
                live[state.next_dyno_id() - 1] = (space, number, slot)
        assert state.dense_numbers("sushi", "nothing") == 0 and state.dense_slots("none") == 0
    finally:
        state.close()


def test_memory_sampling_reads_the_index_of_sized_dynos_never_the_table(tmp_path: Path) -> None:
    """A row holds environments (kilobytes): a scan of thousands stalled the event loop every
    20 s. The statement sized_running() runs is answered from the partial index alone."""
    state = State(str(tmp_path / "state"))
    try:
        ran: list[str] = []
        state.db.set_trace_callback(ran.append)
        state.sized_running()
        state.db.set_trace_callback(None)
        (statement,) = [s for s in ran if s.lstrip().upper().startswith("SELECT")]
        plan = " ".join(r[3] for r in state.db.execute(f"EXPLAIN QUERY PLAN {statement}"))
        assert "USING COVERING INDEX dynos_sized" in plan, plan
    finally:
        state.close()


def _add_dynos(state: State, space: str, ptype: str, numbers: range) -> None:
    """Rows as insert_dyno writes them, slot = number (raw SQL: the triggers count any write)."""
    state.db.executemany(
        "INSERT INTO dynos (app, space, type, number, state, slot, ip, netns, veth, command,"
        " cwd, uid, gid, env, detached, log_path, created_at) VALUES"
        " ('sushi', ?, ?, ?, 'up', ?, 'x', ?, ?, 'c', '/', 1, 1, '{}', 1, 'l', 0)",
        [(space, ptype, n, n, f"{space}{ptype}{n}", f"v{space}{ptype}{n}") for n in numbers],
    )


def _steps(state: State, ask: Callable[[], object]) -> int:
    """SQLite virtual machine instructions one call runs (counted by the progress handler)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    state.db.set_progress_handler(count, 1)
    try:
        ask()
    finally:
        state.db.set_progress_handler(None, 1)
    return steps[0]


def test_dense_numbers_and_slots_cost_the_same_at_2000_dynos_as_at_10(tmp_path: Path) -> None:
    """A start's two questions read a kept count and the two ends of an index, not every entry
    (COUNT(*) over 4,000 index entries was 0.4 ms each, on the event loop)."""
    state = State(str(tmp_path))
    try:
        state.add_app(App("sushi"))
        _add_dynos(state, "small", "web", range(1, 11))
        _add_dynos(state, "big", "worker", range(1, 2001))
        assert state.dense_numbers("sushi", "web") == 10
        assert state.dense_numbers("sushi", "worker") == 2000
        assert state.dense_slots("small") == 10 and state.dense_slots("big") == 2000
        small = _steps(state, lambda: state.dense_numbers("sushi", "web"))
        big = _steps(state, lambda: state.dense_numbers("sushi", "worker"))
        assert big == small, (small, big)
        small = _steps(state, lambda: state.dense_slots("small"))
        big = _steps(state, lambda: state.dense_slots("big"))
        assert big == small, (small, big)
    finally:
        state.close()


def test_the_counts_follow_every_write_and_are_counted_again_at_open(tmp_path: Path) -> None:
    """Deletes, a drain replacing a draining /30 (INSERT OR REPLACE: its deletion counts too),
    an update that moves a row, and a file whose counts are wrong or whose triggers are gone
    (an older dynod wrote it): each open counts from the rows, and a count of none beside rows
    is not believed."""

    def counts(state: State) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        types = {(r[0], r[1]): r[2] for r in state.db.execute("SELECT * FROM type_counts")}
        slots = {r[0]: r[1] for r in state.db.execute("SELECT * FROM slot_counts")}
        return {k: n for k, n in types.items() if n}, {k: n for k, n in slots.items() if n}

    def truth(state: State) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        types = state.db.execute("SELECT app, type, COUNT(*) FROM dynos GROUP BY app, type")
        slots = state.db.execute(
            "SELECT space, COUNT(*) FROM (SELECT space FROM dynos"
            " UNION ALL SELECT space FROM draining) GROUP BY space"
        )
        return {(r[0], r[1]): r[2] for r in types}, {r[0]: r[1] for r in slots}

    state = State(str(tmp_path))
    try:
        state.add_app(App("sushi"))
        _add_dynos(state, "acme", "web", range(1, 6))
        assert counts(state) == truth(state) == ({("sushi", "web"): 5}, {"acme": 5})
        third = state.dyno(3)
        assert third is not None
        state.remove_dyno(third)  # slot 3 drains
        assert counts(state) == truth(state) == ({("sushi", "web"): 4}, {"acme": 5})
        state.db.execute(
            "INSERT OR REPLACE INTO draining (space, slot, veth) VALUES ('acme', 3, 'again')"
        )
        assert counts(state) == truth(state)
        state.db.execute("UPDATE dynos SET type='worker', space='other' WHERE number=5")
        assert counts(state) == truth(state)
        assert counts(state)[1] == {"acme": 4, "other": 1}
        state.drained([("acme", 3)])
        after = ({("sushi", "web"): 3, ("sushi", "worker"): 1}, {"acme": 3, "other": 1})
        assert counts(state) == truth(state) == after
        state.db.executescript("UPDATE type_counts SET n = 0; UPDATE slot_counts SET n = 0;")
        # rows a count misses are never taken for none: the lists decide
        assert state.dense_numbers("sushi", "web") is None and state.dense_slots("acme") is None
        state.db.execute("UPDATE type_counts SET n = 99")
        state.db.executescript("DROP TRIGGER dynos_counted; DROP TRIGGER dynos_uncounted;")
        _add_dynos(state, "acme", "web", range(6, 8))  # not counted: no trigger
        assert counts(state) != truth(state)
    finally:
        state.close()
    state = State(str(tmp_path))
    try:
        assert counts(state) == truth(state)
        assert state.dense_numbers("sushi", "web") is None  # 1, 2, 4, 6, 7: not 1..N
        _add_dynos(state, "acme", "web", range(8, 9))  # the triggers are back
        assert counts(state) == truth(state)
    finally:
        state.close()
