"""One encoding of the Common Runtime in the state: '' for apps as for dynos."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dynod.state.store import SCHEMA_VERSION, App, State

V3_APPS = """
CREATE TABLE spaces (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    cidr TEXT NOT NULL, nat_ip TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE apps (name TEXT PRIMARY KEY, created_at REAL NOT NULL,
    space TEXT REFERENCES spaces(name), internal_routing INTEGER NOT NULL DEFAULT 0,
    dns_discovery INTEGER NOT NULL DEFAULT 0);
CREATE TABLE dynos (id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL);
INSERT INTO spaces (name, cidr, nat_ip, created_at) VALUES ('acme', '10.9.0.0/16', '', 1);
INSERT INTO apps VALUES ('common', 1, NULL, 0, 0);
INSERT INTO apps VALUES ('private', 2, 'acme', 1, 1);
PRAGMA user_version=3;
"""


def test_a_new_common_runtime_app_is_stored_as_the_empty_space(tmp_path: Path) -> None:
    state = State(str(tmp_path))
    state.add_app(App("sushi"))
    app = state.app("sushi")
    assert app is not None and app.space == ""
    assert state.db.execute("SELECT space FROM apps").fetchone()[0] == ""
    assert [a.name for a in state.apps_in("")] == ["sushi"]
    state.close()


def test_version_3_apps_with_a_null_space_are_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(V3_APPS)
    db.close()
    state = State(str(tmp_path))
    assert state.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    common, private = state.app("common"), state.app("private")
    assert common is not None and common.space == "" and common.created_at == 1
    assert private is not None and private.space == "acme" and private.internal_routing
    assert private.dns_discovery
    assert state.db.execute("SELECT COUNT(*) FROM apps WHERE space IS NULL").fetchone()[0] == 0
    state.close()
