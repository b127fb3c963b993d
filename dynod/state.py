"""The daemon's source of truth: apps, dynos and the /30s they hold, in SQLite.

Kernel state is derived from this: at start-up the daemon rebuilds what is missing and removes
what the state does not know. Every write is its own transaction, so a daemon killed at any point
leaves a state it can reconcile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dynos (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app         TEXT NOT NULL REFERENCES apps(name),
    type        TEXT NOT NULL,
    number      INTEGER NOT NULL,
    state       TEXT NOT NULL,
    slot        INTEGER NOT NULL UNIQUE,
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
    detached    INTEGER NOT NULL,
    restarts    INTEGER NOT NULL DEFAULT 0,
    log_path    TEXT NOT NULL,
    log_offset  INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    started_at  REAL,
    UNIQUE (app, type, number)
);
-- /30s whose dyno is gone but whose host-side veth the kernel has not destroyed yet
CREATE TABLE IF NOT EXISTS draining (
    slot        INTEGER PRIMARY KEY,
    veth        TEXT NOT NULL
);
"""


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
    env: dict[str, str] = field(default_factory=dict)
    detached: bool = True
    restarts: int = 0
    log_path: str = ""
    log_offset: int = 0
    created_at: float = 0.0
    started_at: float | None = None

    @property
    def name(self) -> str:
        return f"{self.type}.{self.number}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["name"] = self.name
        data.pop("env")
        data["uptime"] = (time.time() - self.started_at) if self.started_at else None
        return data


class State:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.db = sqlite3.connect(os.path.join(directory, "state.db"), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # apps
    def app_exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM apps WHERE name=?", (name,)).fetchone() is not None

    def add_app(self, name: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO apps (name, created_at) VALUES (?, ?)", (name, time.time())
        )

    def apps(self) -> list[str]:
        return [r["name"] for r in self.db.execute("SELECT name FROM apps ORDER BY name")]

    # dynos
    @staticmethod
    def _dyno(row: sqlite3.Row) -> Dyno:
        data = dict(row)
        data["env"] = json.loads(data["env"])
        data["detached"] = bool(data["detached"])
        return Dyno(**data)

    def dynos(self, app: str | None = None) -> list[Dyno]:
        if app is None:
            rows = self.db.execute("SELECT * FROM dynos ORDER BY app, type, number")
        else:
            rows = self.db.execute("SELECT * FROM dynos WHERE app=? ORDER BY type, number", (app,))
        return [self._dyno(r) for r in rows]

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

    def slots_unavailable(self) -> set[int]:
        rows = self.db.execute("SELECT slot FROM dynos UNION SELECT slot FROM draining")
        return {r["slot"] for r in rows}

    def next_dyno_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='dynos'").fetchone()
        return (row["seq"] if row else 0) + 1

    def insert_dyno(self, dyno: Dyno) -> Dyno:
        data = asdict(dyno)
        data.pop("id")
        data["env"] = json.dumps(dyno.env)
        data["detached"] = int(dyno.detached)
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
        cursor = self.db.execute(
            f"UPDATE dynos SET {sets} WHERE id=?", (*changes.values(), dyno.id)
        )
        if cursor.rowcount == 0:
            raise KeyError(f"dyno {dyno.id} ({dyno.name}) is no longer in the state")

    def remove_dyno(self, dyno: Dyno) -> None:
        """Forget a dyno; its /30 drains until the kernel has destroyed its veth."""
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM dynos WHERE id=?", (dyno.id,))
            self.db.execute(
                "INSERT OR REPLACE INTO draining (slot, veth) VALUES (?, ?)",
                (dyno.slot, dyno.veth),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # draining /30s
    def draining(self) -> dict[int, str]:
        return {r["slot"]: r["veth"] for r in self.db.execute("SELECT * FROM draining")}

    def drained(self, slots: list[int]) -> None:
        self.db.executemany("DELETE FROM draining WHERE slot=?", [(s,) for s in slots])
