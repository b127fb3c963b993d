"""State rows for unit tests that need a dyno without a daemon."""

from __future__ import annotations

from typing import Any

from dynod.state.store import Dyno


def dyno(**changes: Any) -> Dyno:
    base: dict[str, Any] = dict(
        id=1,
        app="sushi",
        type="web",
        number=1,
        state="up",
        slot=1,
        ip="172.16.0.6",
        port=5000,
        pid=None,
        pid_start=None,
        netns="tstunit-no-such-namespace",
        veth="lo",
        command="true",
        cwd="/",
        uid=65534,
        gid=65534,
    )
    base.update(changes)
    return Dyno(**base)
