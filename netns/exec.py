"""Starting a program inside a network namespace (`ip netns exec NAME argv...`).

fork/vfork copies the namespaces of the calling thread, so a child started while this thread is
inside the namespace is born there: no helper process, no setns in the child.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from netns import namespace


def popen_inside(name: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    with namespace.entered(name):
        return subprocess.Popen(list(argv), **popen_kwargs)


def drop_privileges_argv(uid: int, gid: int, argv: Sequence[str]) -> list[str]:
    """`setpriv` (util-linux) turns the child into uid:gid with no supplementary groups, no
    capabilities (effective, permitted, inheritable, ambient and bounding), and no_new_privs,
    so not even a setuid binary can give it privileges back."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
        *argv,
    ]
