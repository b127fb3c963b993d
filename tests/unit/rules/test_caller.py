"""rules/caller.py: what every CLI command passes on of its caller (one helper for `run`,
`ps:scale`, `up` and the pytest plugin)."""

from __future__ import annotations

import os

import pytest

from dynod.rules.caller import INHERITED_ENV, inherited_env, sudo_ids


def test_inherited_env_is_the_four_names_that_are_set() -> None:
    environ = {"PATH": "/p", "TZ": "UTC", "HOME": "/root", "SECRET": "x"}
    assert inherited_env(environ) == {"PATH": "/p", "TZ": "UTC"}
    assert INHERITED_ENV == ("PATH", "LANG", "LC_ALL", "TZ")


@pytest.mark.parametrize(
    ("euid", "environ", "expected"),
    [
        (0, {"SUDO_UID": "1000", "SUDO_GID": "1001"}, (1000, 1001)),
        (0, {"SUDO_UID": "1000"}, (1000, 1000)),  # no group: the user's number, as before
        (0, {"SUDO_UID": "1000", "SUDO_GID": "staff"}, (1000, 1000)),
        (0, {"SUDO_UID": "x"}, None),
        (0, {}, None),
        (1000, {"SUDO_UID": "1000"}, None),  # not root: sudo says nothing about who we are
    ],
)
def test_sudo_ids(
    monkeypatch: pytest.MonkeyPatch,
    euid: int,
    environ: dict[str, str],
    expected: tuple[int, int] | None,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert sudo_ids(environ) == expected
