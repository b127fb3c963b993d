"""The daemon's source of truth: spaces, apps, dynos and the /30s they hold, in SQLite.

Kernel state is derived from this: at start-up the daemon rebuilds what is missing and removes
what the state does not know. Every write is its own transaction, so a daemon killed at any point
leaves a state it can reconcile.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dynod.errors import DynodError

DB_FILE = "state.db"  # in the state directory

SCHEMA_VERSION = 6

SCHEMA = """
CREATE TABLE IF NOT EXISTS spaces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    cidr        TEXT NOT NULL UNIQUE,
    nat_ip      TEXT NOT NULL,
    created_at  REAL NOT NULL
);
-- who may reach a space's external apps through the router
CREATE TABLE IF NOT EXISTS trusted_ips (
    space       TEXT NOT NULL REFERENCES spaces(name),
    cidr        TEXT NOT NULL,
    PRIMARY KEY (space, cidr)
);
CREATE TABLE IF NOT EXISTS apps (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    space       TEXT NOT NULL DEFAULT '',   -- its space ('': the Common Runtime)
    internal_routing INTEGER NOT NULL DEFAULT 0,
    dns_discovery INTEGER NOT NULL DEFAULT 0,
    dir         TEXT NOT NULL DEFAULT ''    -- where its Procfile is ('': not recorded)
);
CREATE TABLE IF NOT EXISTS dynos (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app         TEXT NOT NULL REFERENCES apps(name),
    space       TEXT NOT NULL DEFAULT '',   -- the network of its /30 ('': Common Runtime)
    type        TEXT NOT NULL,
    number      INTEGER NOT NULL,
    state       TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    ip          TEXT NOT NULL,
    port        INTEGER,
    pid         INTEGER,
    pid_start   REAL,
    netns       TEXT NOT NULL UNIQUE,
    veth        TEXT NOT NULL UNIQUE,
    command     TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    env         TEXT NOT NULL,
    inherited   TEXT NOT NULL DEFAULT '{{}}',  -- the caller's PATH, LANG...: below config vars
    detached    INTEGER NOT NULL,
    restarts    INTEGER NOT NULL DEFAULT 0,
    log_path    TEXT NOT NULL,
    log_offset  INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    started_at  REAL,
    size        TEXT NOT NULL DEFAULT '',   -- its dyno size ('': none, no limits)
    formation   INTEGER NOT NULL DEFAULT 0, -- started by the app's formation (ps:scale)
    UNIQUE (app, type, number),
    UNIQUE (space, slot)
);
-- /30s whose dyno is gone but whose host-side veth the kernel has not destroyed yet
CREATE TABLE IF NOT EXISTS draining (
    space       TEXT NOT NULL DEFAULT '',
    slot        INTEGER NOT NULL,
    veth        TEXT NOT NULL,
    PRIMARY KEY (space, slot)
);
{formation}
"""

# Version 5 adds config vars, per app (values are secrets: this root-only file is their one home),
# and each app's release counter (vN), which a config change raises.
CONFIG_VARS = """
CREATE TABLE IF NOT EXISTS config_vars (
    app         TEXT NOT NULL REFERENCES apps(name),
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS releases (
    app         TEXT PRIMARY KEY REFERENCES apps(name),
    version     INTEGER NOT NULL
);
"""
# The formation (issue 9): per app and type, the Procfile's command and how many dynos run it,
# with who they run as and where, so the daemon converges after a restart without the Procfile.
FORMATION = """
CREATE TABLE IF NOT EXISTS formation (
    app         TEXT NOT NULL REFERENCES apps(name),
    type        TEXT NOT NULL,
    command     TEXT NOT NULL,
    quantity    INTEGER NOT NULL,
    size        TEXT NOT NULL DEFAULT '',   -- '': the default size when its dynos start
    cwd         TEXT NOT NULL,
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    env         TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (app, type)
);
"""
SCHEMA = SCHEMA.format(formation=FORMATION)

# What memory sampling reads (sized_running, a slice a second), in an index of the sized dynos: a
# dyno's row holds its environment and the caller's (kilobytes), so a scan of 4,000 rows read
# megabytes on the event loop (141 ms at 3,000 dynos, every 20 s, stalling the starts of that
# moment), even with no sized dyno at all. Made at every open (any schema version has the
# columns), so no migration is needed and an older dynod reading the file ignores it.
SIZED_INDEX = """
CREATE INDEX IF NOT EXISTS dynos_sized ON dynos (state, netns, size, created_at)
    WHERE size != ''
"""

# What a start asks (dense_numbers, dense_slots): how many dynos each app's process type has,
# and how many /30s each network holds (its dynos' and its draining ones). COUNT(*) over an index
# range reads every entry of it: 0.4 ms each at 4,000 dynos of one type in one space, two a
# start, on the event loop. Triggers keep the counts on every write (ours, a migration's, an
# older dynod's: they live in the file), and every open counts them again from the rows, so a
# file written without the triggers is right too. Made at every open, like SIZED_INDEX: no
# schema version, and an older dynod reading the file ignores the tables (its INSERT OR REPLACE
# of a /30 already draining, without recursive_triggers, counts one /30 too many: a free one is
# not reused until the next open; a count never makes a taken one look free). The conflict
# targets are named: SQLite before 3.35 (Debian 11, Ubuntu 20.04) requires them.
COUNTS = """
CREATE TABLE IF NOT EXISTS type_counts (
    app TEXT NOT NULL, type TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (app, type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slot_counts (
    space TEXT NOT NULL PRIMARY KEY, n INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS dynos_counted AFTER INSERT ON dynos BEGIN
    INSERT INTO type_counts VALUES (NEW.app, NEW.type, 1)
        ON CONFLICT (app, type) DO UPDATE SET n = n + 1;
    INSERT INTO slot_counts VALUES (NEW.space, 1) ON CONFLICT (space) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS dynos_uncounted AFTER DELETE ON dynos BEGIN
    UPDATE type_counts SET n = n - 1 WHERE app = OLD.app AND type = OLD.type;
    UPDATE slot_counts SET n = n - 1 WHERE space = OLD.space;
END;
CREATE TRIGGER IF NOT EXISTS dynos_recounted AFTER UPDATE OF app, type, space ON dynos BEGIN
    UPDATE type_counts SET n = n - 1 WHERE app = OLD.app AND type = OLD.type;
    UPDATE slot_counts SET n = n - 1 WHERE space = OLD.space;
    INSERT INTO type_counts VALUES (NEW.app, NEW.type, 1)
        ON CONFLICT (app, type) DO UPDATE SET n = n + 1;
    INSERT INTO slot_counts VALUES (NEW.space, 1) ON CONFLICT (space) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS draining_counted AFTER INSERT ON draining BEGIN
    INSERT INTO slot_counts VALUES (NEW.space, 1) ON CONFLICT (space) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS draining_uncounted AFTER DELETE ON draining BEGIN
    UPDATE slot_counts SET n = n - 1 WHERE space = OLD.space;
END;
CREATE TRIGGER IF NOT EXISTS draining_recounted AFTER UPDATE OF space ON draining BEGIN
    UPDATE slot_counts SET n = n - 1 WHERE space = OLD.space;
    INSERT INTO slot_counts VALUES (NEW.space, 1) ON CONFLICT (space) DO UPDATE SET n = n + 1;
END;
DELETE FROM type_counts;
INSERT INTO type_counts SELECT app, type, COUNT(*) FROM dynos GROUP BY app, type;
DELETE FROM slot_counts;
INSERT INTO slot_counts SELECT space, COUNT(*) FROM (
    SELECT space FROM dynos UNION ALL SELECT space FROM draining
) GROUP BY space;
"""

# Issue 2's state (version 0 or 1): no spaces, one range. Its rows move into the new tables
# as Common Runtime apps and dynos, so an upgrade keeps every running dyno.
MIGRATE_FROM_1 = """
ALTER TABLE apps RENAME TO apps_v1;
ALTER TABLE dynos RENAME TO dynos_v1;
ALTER TABLE draining RENAME TO draining_v1;
{schema}
INSERT INTO apps (name, created_at) SELECT name, created_at FROM apps_v1;
INSERT INTO dynos (id, app, space, type, number, state, slot, ip, port, pid, pid_start, netns,
    veth, command, cwd, uid, gid, env, detached, restarts, log_path, log_offset, created_at,
    started_at)
  SELECT id, app, '', type, number, state, slot, ip, port, pid, pid_start, netns, veth, command,
    cwd, uid, gid, env, detached, restarts, log_path, log_offset, created_at, started_at
  FROM dynos_v1;
INSERT INTO draining (space, slot, veth) SELECT '', slot, veth FROM draining_v1;
-- dyno ids name veths: the counter goes on where it was, so no id (and no veth name) repeats
DELETE FROM sqlite_sequence WHERE name='dynos';
INSERT INTO sqlite_sequence (name, seq) SELECT 'dynos', seq FROM sqlite_sequence
  WHERE name='dynos_v1';
DROP TABLE apps_v1;
DROP TABLE dynos_v1;
DROP TABLE draining_v1;
"""


# Version 2: dynos had no size. Those keep running as they were, without limits (size '').
MIGRATE_FROM_2 = """
ALTER TABLE dynos ADD COLUMN size TEXT NOT NULL DEFAULT '';
"""

# Version 3: a Common Runtime app's space was NULL (a dyno's ''): one encoding now, ''.
MIGRATE_FROM_3 = """
ALTER TABLE apps RENAME TO apps_v3;
CREATE TABLE apps (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    space       TEXT NOT NULL DEFAULT '',   -- its space ('': the Common Runtime)
    internal_routing INTEGER NOT NULL DEFAULT 0,
    dns_discovery INTEGER NOT NULL DEFAULT 0
);
INSERT INTO apps (name, created_at, space, internal_routing, dns_discovery)
  SELECT name, created_at, COALESCE(space, ''), internal_routing, dns_discovery FROM apps_v3;
DROP TABLE apps_v3;
"""

# Version 4: no formations, no app directory.
MIGRATE_FROM_4 = f"""
ALTER TABLE apps ADD COLUMN dir TEXT NOT NULL DEFAULT '';
ALTER TABLE dynos ADD COLUMN formation INTEGER NOT NULL DEFAULT 0;
{FORMATION}
"""

# Version 5: a dyno's caller's environment (PATH, LANG, LC_ALL, TZ) was in `env` with `run -e`'s
# values, above the config vars; it has a column of its own now, below them. A formation dyno's
# `env` was only the caller's (a scale copied it), so it moves whole; a one-off's mixes the two,
# which cannot be told apart: that row keeps the old order.
MIGRATE_FROM_5 = """
ALTER TABLE dynos ADD COLUMN inherited TEXT NOT NULL DEFAULT '{}';
"""
# Only a version 5 state can hold formation dynos (version 4 had no formations).
FORMATION_ENV_FROM_5 = """
UPDATE dynos SET inherited = env, env = '{}' WHERE formation = 1;
"""


@dataclass
class Space:
    id: int
    name: str
    cidr: str
    nat_ip: str
    created_at: float = 0.0


@dataclass
class App:
    name: str
    space: str = ""  # "": the Common Runtime (as for dynos)
    internal_routing: bool = False
    dns_discovery: bool = False
    created_at: float = 0.0
    dir: str = ""  # where its Procfile is (apps:create --dir; the first caller's directory)


@dataclass
class Dyno:
    id: int
    app: str
    type: str
    number: int
    state: str
    slot: int
    ip: str
    port: int | None
    pid: int | None
    pid_start: float | None
    netns: str
    veth: str
    command: str
    cwd: str
    uid: int
    gid: int
    env: dict[str, str] = field(default_factory=dict)  # its own (`run -e`): over config vars
    detached: bool = True
    restarts: int = 0
    log_path: str = ""
    log_offset: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    space: str = ""  # the network of its /30: "" is the Common Runtime
    size: str = ""  # its dyno size (dynod.sizes); "": none, no limits
    formation: bool = False  # started by the app's formation, which may stop or replace it
    # The caller's PATH, LANG, LC_ALL, TZ (`run`, `ps:scale`): under the config vars.
    inherited: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.type}.{self.number}"

    def to_json(self) -> dict[str, Any]:
        # Field by field, not asdict(): that deep-copies `env` (a whole inherited environment)
        # only to drop it, which made `dynod ps` take about 0.2 ms a dyno.
        data = {name: getattr(self, name) for name in _DYNO_FIELDS}
        data["name"] = self.name
        data["uptime"] = (time.time() - self.started_at) if self.started_at else None
        return data


# what to_json shows: no environment
_DYNO_FIELDS = tuple(f.name for f in fields(Dyno) if f.name not in ("env", "inherited"))


@dataclass
class Process:
    """One process type of an app's formation: its command and how many dynos run it, and what
    they start with (who, where, the caller's environment at the last scale)."""

    app: str
    type: str
    command: str
    quantity: int
    cwd: str
    uid: int
    gid: int
    env: dict[str, str] = field(default_factory=dict)
    size: str = ""  # "": the default size
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "command": self.command,
            "quantity": self.quantity,
            "size": self.size or None,
        }


class State:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.db = sqlite3.connect(os.path.join(directory, DB_FILE), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        # INSERT OR REPLACE's deletion fires the delete triggers too (COUNTS stay right)
        self.db.execute("PRAGMA recursive_triggers=ON")
        self._migrate()
        self._counted = self._count()
        try:
            self.db.execute(SIZED_INDEX)
        except sqlite3.OperationalError as exc:
            if "no such column" not in str(exc):
                raise  # a locked, full or broken state is an error, not a slower scan
            # a table without those columns (a test's minimal one) is scanned: only slower

    def _count(self) -> bool:
        """COUNTS made and counted; False for a file without the tables and columns they
        read (a test's minimal one): dense_numbers and dense_slots then leave it to the lists."""
        try:
            self.db.executescript(f"BEGIN;\n{COUNTS}\nCOMMIT;")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if not isinstance(exc, sqlite3.OperationalError) or "no such" not in str(exc):
                raise  # a locked, full or broken state is an error
            return False
        return True

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise DynodError(
                f"the state in {self.directory} was written by a newer dynod "
                f"(schema {version}, this one knows {SCHEMA_VERSION})",
                "run the newer dynod, or give this one another --state-dir",
            )
        old = self.db.execute("SELECT 1 FROM sqlite_master WHERE name='dynos'").fetchone()
        if not old:
            script = SCHEMA
        elif version == 5:
            script = MIGRATE_FROM_5 + FORMATION_ENV_FROM_5
        elif version == 4:
            script = MIGRATE_FROM_4 + MIGRATE_FROM_5
        elif version == 3:
            script = MIGRATE_FROM_3 + MIGRATE_FROM_4 + MIGRATE_FROM_5
        elif version == 2:
            script = MIGRATE_FROM_2 + MIGRATE_FROM_3 + MIGRATE_FROM_4 + MIGRATE_FROM_5
        else:
            script = MIGRATE_FROM_1.format(schema=SCHEMA)
        script += CONFIG_VARS
        # One transaction: a daemon killed mid-upgrade leaves the old state as it was.
        self.db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")

    def close(self) -> None:
        self.db.close()

    # spaces
    @staticmethod
    def _space(row: sqlite3.Row) -> Space:
        return Space(**dict(row))

    def spaces(self) -> list[Space]:
        return [self._space(r) for r in self.db.execute("SELECT * FROM spaces ORDER BY name")]

    def space(self, name: str) -> Space | None:
        row = self.db.execute("SELECT * FROM spaces WHERE name=?", (name,)).fetchone()
        return self._space(row) if row else None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK if anything in between raised: all or nothing."""
        self.db.execute("BEGIN")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def add_space(self, name: str, cidr: str, nat_ip: str, trusted: list[str]) -> Space:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO spaces (name, cidr, nat_ip, created_at) VALUES (?, ?, ?, ?)",
                (name, cidr, nat_ip, time.time()),
            )
            self.db.executemany(
                "INSERT INTO trusted_ips (space, cidr) VALUES (?, ?)", [(name, c) for c in trusted]
            )
        space = self.space(name)
        assert space is not None and space.id == cursor.lastrowid
        return space

    def remove_space(self, name: str) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM trusted_ips WHERE space=?", (name,))
            self.db.execute("DELETE FROM spaces WHERE name=?", (name,))

    def trusted_ips(self, space: str) -> list[str]:
        rows = self.db.execute(
            "SELECT cidr FROM trusted_ips WHERE space=? ORDER BY rowid", (space,)
        )
        return [r["cidr"] for r in rows]

    def add_trusted_ip(self, space: str, cidr: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO trusted_ips (space, cidr) VALUES (?, ?)", (space, cidr)
        )

    def remove_trusted_ip(self, space: str, cidr: str) -> bool:
        cursor = self.db.execute("DELETE FROM trusted_ips WHERE space=? AND cidr=?", (space, cidr))
        return cursor.rowcount > 0

    # apps
    @staticmethod
    def _app(row: sqlite3.Row) -> App:
        data = dict(row)
        data["internal_routing"] = bool(data["internal_routing"])
        data["dns_discovery"] = bool(data["dns_discovery"])
        return App(**data)

    def app_exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM apps WHERE name=?", (name,)).fetchone() is not None

    def app(self, name: str) -> App | None:
        row = self.db.execute("SELECT * FROM apps WHERE name=?", (name,)).fetchone()
        return self._app(row) if row else None

    def add_app(self, app: App) -> None:
        """Insert the app unless one of that name exists."""
        self.db.execute(
            "INSERT OR IGNORE INTO apps (name, created_at, space, internal_routing, dns_discovery,"
            " dir) VALUES (?, ?, ?, ?, ?, ?)",
            (
                app.name,
                time.time(),
                app.space,
                int(app.internal_routing),
                int(app.dns_discovery),
                app.dir,
            ),
        )

    def remove_app(self, name: str) -> None:
        """The app, its formation, its config vars and its release counter, in one
        transaction."""
        with self._transaction():
            self.db.execute("DELETE FROM config_vars WHERE app=?", (name,))
            self.db.execute("DELETE FROM releases WHERE app=?", (name,))
            self.db.execute("DELETE FROM formation WHERE app=?", (name,))
            self.db.execute("DELETE FROM apps WHERE name=?", (name,))

    # config vars
    def config_vars(self, app: str) -> dict[str, str]:
        rows = self.db.execute(
            "SELECT name, value FROM config_vars WHERE app=? ORDER BY name", (app,)
        )
        return {r["name"]: r["value"] for r in rows}

    def release(self, app: str) -> int:
        """The app's release number: v1 from its creation, one more per config change."""
        row = self.db.execute("SELECT version FROM releases WHERE app=?", (app,)).fetchone()
        return row["version"] if row else 1

    def change_config(self, app: str, changes: dict[str, str | None]) -> int:
        """Set (a str) and unset (None) config vars and raise the release counter, in one
        transaction. Returns the new release number."""
        with self._transaction():
            for name, value in changes.items():
                if value is None:
                    self.db.execute("DELETE FROM config_vars WHERE app=? AND name=?", (app, name))
                else:
                    self.db.execute(
                        "INSERT OR REPLACE INTO config_vars (app, name, value) VALUES (?, ?, ?)",
                        (app, name, value),
                    )
            version = self.release(app) + 1
            self.db.execute(
                "INSERT OR REPLACE INTO releases (app, version) VALUES (?, ?)", (app, version)
            )
        return version

    def set_dns_discovery(self, name: str, enabled: bool) -> None:
        self.db.execute("UPDATE apps SET dns_discovery=? WHERE name=?", (int(enabled), name))

    def apps(self) -> list[App]:
        return [self._app(r) for r in self.db.execute("SELECT * FROM apps ORDER BY name")]

    def apps_in(self, space: str) -> list[App]:
        rows = self.db.execute("SELECT * FROM apps WHERE space=? ORDER BY name", (space,))
        return [self._app(r) for r in rows]

    # dynos
    @staticmethod
    def _dyno(row: sqlite3.Row) -> Dyno:
        data = dict(row)
        data["env"] = json.loads(data["env"])
        data["inherited"] = json.loads(data["inherited"])
        data["detached"] = bool(data["detached"])
        data["formation"] = bool(data["formation"])
        return Dyno(**data)

    def dynos(self, app: str | None = None) -> list[Dyno]:
        if app is None:
            rows = self.db.execute("SELECT * FROM dynos ORDER BY app, type, number")
        else:
            rows = self.db.execute("SELECT * FROM dynos WHERE app=? ORDER BY type, number", (app,))
        return [self._dyno(r) for r in rows]

    def sized_running(self, slices: int = 1, turn: int = 0) -> list[tuple[int, str, str, float]]:
        """(id, netns, size, created_at) of the dynos with a size that are starting or up, those
        whose id is `turn` modulo `slices`: what memory sampling reads in one turn, without
        building a row per dyno (4,000 rows: about 0.1 s on the event loop), from the index of
        sized dynos (SIZED_INDEX), never a scan of the rows."""
        rows = self.db.execute(
            "SELECT id, netns, size, created_at FROM dynos"
            " WHERE size != '' AND state IN ('starting', 'up') AND id % ?1 = ?2",
            (slices, turn),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def running_networks(self) -> list[tuple[int, str, str]]:
        """(id, netns, veth) of every dyno starting or up with a process: what the health check
        looks at every second, read without building the rows (4,000 dynos: 48 ms as rows)."""
        rows = self.db.execute(
            "SELECT id, netns, veth FROM dynos WHERE state IN ('starting', 'up') AND pid"
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def dyno_ids(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT id FROM dynos")}

    def dyno(self, dyno_id: int) -> Dyno | None:
        row = self.db.execute("SELECT * FROM dynos WHERE id=?", (dyno_id,)).fetchone()
        return self._dyno(row) if row else None

    def find_dyno(self, app: str, ptype: str, number: int) -> Dyno | None:
        row = self.db.execute(
            "SELECT * FROM dynos WHERE app=? AND type=? AND number=?", (app, ptype, number)
        ).fetchone()
        return self._dyno(row) if row else None

    def numbers_taken(self, app: str, ptype: str) -> set[int]:
        rows = self.db.execute("SELECT number FROM dynos WHERE app=? AND type=?", (app, ptype))
        return {r["number"] for r in rows}

    def dense_numbers(self, app: str, ptype: str) -> int | None:
        """N when the type's dynos are numbered exactly 1..N (the usual case: the next is N+1),
        else None (ask numbers_taken). From the kept count (COUNTS) and the two ends of the
        index: a start costs the same with 4,000 dynos of one type as with one."""
        if not self._counted:
            return None
        count, low, top = self.db.execute(
            "SELECT (SELECT n FROM type_counts WHERE app=?1 AND type=?2),"
            " (SELECT MIN(number) FROM dynos WHERE app=?1 AND type=?2),"
            " (SELECT MAX(number) FROM dynos WHERE app=?1 AND type=?2)",
            (app, ptype),
        ).fetchone()
        if not count:
            return 0 if low is None else None  # rows without a count: the list decides
        return top if low == 1 and count == top else None

    def number_taken(self, app: str, ptype: str, number: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM dynos WHERE app=? AND type=? AND number=?", (app, ptype, number)
        ).fetchone()
        return row is not None

    def dense_slots(self, space: str) -> int | None:
        """N when the network's slots in use (dynos and draining /30s) are exactly 1..N, else
        None (ask slots_unavailable): like dense_numbers, from the kept count and the indexes."""
        if not self._counted:
            return None
        count, *ends = self.db.execute(
            "SELECT (SELECT n FROM slot_counts WHERE space=?1),"
            " (SELECT MIN(slot) FROM dynos WHERE space=?1),"
            " (SELECT MIN(slot) FROM draining WHERE space=?1),"
            " (SELECT MAX(slot) FROM dynos WHERE space=?1),"
            " (SELECT MAX(slot) FROM draining WHERE space=?1)",
            (space,),
        ).fetchone()
        lows = [end for end in ends[:2] if end is not None]
        tops = [end for end in ends[2:] if end is not None]
        if not count or not lows:  # counts and rows disagree: the list decides
            return None if count or lows else 0
        return max(tops) if min(lows) == 1 and count == max(tops) else None

    def slots_unavailable(self, space: str) -> set[int]:
        rows = self.db.execute(
            "SELECT slot FROM dynos WHERE space=? UNION SELECT slot FROM draining WHERE space=?",
            (space, space),
        )
        return {r["slot"] for r in rows}

    def next_dyno_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='dynos'").fetchone()
        return (row["seq"] if row else 0) + 1

    def insert_dyno(self, dyno: Dyno) -> Dyno:
        data = asdict(dyno)
        data.pop("id")
        data["env"] = json.dumps(dyno.env)
        data["inherited"] = json.dumps(dyno.inherited)
        data["detached"] = int(dyno.detached)
        data["formation"] = int(dyno.formation)
        columns = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        cursor = self.db.execute(
            f"INSERT INTO dynos ({columns}) VALUES ({marks})", tuple(data.values())
        )
        dyno.id = int(cursor.lastrowid or 0)
        return dyno

    def update_dyno(self, dyno: Dyno, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(dyno, key, value)
        sets = ", ".join(f"{k}=?" for k in changes)
        values = (json.dumps(v) if k in ("env", "inherited") else v for k, v in changes.items())
        cursor = self.db.execute(f"UPDATE dynos SET {sets} WHERE id=?", (*values, dyno.id))
        if cursor.rowcount == 0:
            raise KeyError(f"dyno {dyno.id} ({dyno.name}) is no longer in the state")

    def remove_dyno(self, dyno: Dyno) -> None:
        """Forget a dyno; its /30 drains until the kernel has destroyed its veth."""
        with self._transaction():
            self.db.execute("DELETE FROM dynos WHERE id=?", (dyno.id,))
            self.db.execute(
                "INSERT OR REPLACE INTO draining (space, slot, veth) VALUES (?, ?, ?)",
                (dyno.space, dyno.slot, dyno.veth),
            )

    # draining /30s
    def draining(self) -> dict[tuple[str, int], str]:
        rows = self.db.execute("SELECT * FROM draining")
        return {(r["space"], r["slot"]): r["veth"] for r in rows}

    def drained(self, slots: list[tuple[str, int]]) -> None:
        self.db.executemany("DELETE FROM draining WHERE space=? AND slot=?", slots)

    # formations
    @staticmethod
    def _process(row: sqlite3.Row) -> Process:
        data = dict(row)
        data["env"] = json.loads(data["env"])
        return Process(**data)

    def formation(self, app: str) -> list[Process]:
        rows = self.db.execute("SELECT * FROM formation WHERE app=? ORDER BY type", (app,))
        return [self._process(r) for r in rows]

    def formations(self) -> list[Process]:
        """Every app's formation, in one read (by app, then type, as `formation`)."""
        rows = self.db.execute("SELECT * FROM formation ORDER BY app, type")
        return [self._process(r) for r in rows]

    def formation_counts(self, app: str) -> dict[str, int]:
        """Type -> how many of the app's formation dynos are not stopping: one counting query,
        no rows built (what a converge with nothing to do needs, every 2 s)."""
        rows = self.db.execute(
            "SELECT type, COUNT(*) FROM dynos WHERE app=? AND formation AND state != 'stopping'"
            " GROUP BY type",
            (app,),
        )
        return {r[0]: r[1] for r in rows}

    def formation_apps(self) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT app FROM formation ORDER BY app")
        return [r["app"] for r in rows]

    def set_formation(self, processes: list[Process]) -> None:
        """Insert or replace these process types' rows, all in one transaction."""
        with self._transaction():
            for p in processes:
                self.db.execute(
                    "INSERT OR REPLACE INTO formation (app, type, command, quantity, size, cwd,"
                    " uid, gid, env, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        p.app,
                        p.type,
                        p.command,
                        p.quantity,
                        p.size,
                        p.cwd,
                        p.uid,
                        p.gid,
                        json.dumps(p.env),
                        time.time(),
                    ),
                )

    def clear_formation(self, app: str) -> None:
        self.db.execute("DELETE FROM formation WHERE app=?", (app,))
