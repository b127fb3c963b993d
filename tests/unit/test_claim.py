"""The daemon's private state directory (dynod/daemon.py): modes, and what dynos may read. No root
needed."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from dynod.claim import make_private_dir, make_private_tree


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_tree_closes_everything_but_what_dynos_read(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "output").mkdir(parents=True)
    (root / "resolv").mkdir()
    files = {
        "state.db": 0o644,
        "state.db-wal": 0o666,
        "dynod.log": 0o644,
        "output/1.out": 0o644,
        "resolv/dynod0.conf": 0o600,
    }
    for name, m in files.items():
        (root / name).write_text("x")
        (root / name).chmod(m)
    for d in (root, root / "output", root / "resolv"):
        d.chmod(0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "api.sock"))
        before = mode(root / "api.sock")

        make_private_dir(str(root))
        changed = make_private_tree(
            str(root), readable=lambda p: p.startswith(str(root / "resolv")) and p.endswith(".conf")
        )

        assert mode(root) == 0o700
        assert mode(root / "output") == mode(root / "resolv") == 0o700
        for name in ("state.db", "state.db-wal", "dynod.log", "output/1.out"):
            assert mode(root / name) == 0o600, name
        assert mode(root / "resolv/dynod0.conf") == 0o644  # bound over a dyno's resolv.conf
        assert mode(outside) == 0o644  # a symlink is never followed out of the tree
        assert mode(root / "api.sock") == before  # nor special files touched
    assert str(root / "state.db") in changed and str(outside) not in changed
    # A second pass changes nothing.
    assert make_private_tree(str(root), readable=lambda p: p.endswith(".conf")) == []


def test_private_dir_is_made_with_its_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    old = os.umask(0o077)
    try:
        make_private_dir(str(target))
    finally:
        os.umask(old)
    assert mode(target) == 0o700 and mode(tmp_path / "a") == 0o700
