"""Launch policy (dynod/control/launch.py): which user a dyno runs as. No root needed."""

from __future__ import annotations

import pwd
from typing import Any

import pytest

from dynod.api.requests import RunRequest
from dynod.control import launch
from dynod.errors import DynodError


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "1000", [1000], 1 << 32, 0xFFFFFFFF])
def test_sudo_ids_must_be_real_ids(bad: Any) -> None:
    for field in ("sudo_uid", "sudo_gid"):
        request = {"sudo_uid": 1000, "sudo_gid": 1000, field: bad}
        with pytest.raises(DynodError) as err:
            launch.dyno_user(RunRequest.parse("app", request), 0, 0, "nobody")
        assert repr(field) in err.value.problem and err.value.fix and err.value.status == 400


def test_sudo_uid_never_gives_root() -> None:
    nobody = pwd.getpwnam("nobody")
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 1000, "sudo_gid": 1001}), 0, 0, "nobody"
    ) == (1000, 1001)
    # sudo called by root: the configured user, never uid 0
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 0, "sudo_gid": 0}), 0, 0, "nobody"
    ) == (
        nobody.pw_uid,
        nobody.pw_gid,
    )
    assert launch.dyno_user(RunRequest.parse("app", {}), 0, 0, "nobody") == (
        nobody.pw_uid,
        nobody.pw_gid,
    )
    # a caller that is not root runs its dynos as itself, whatever it sends
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 5, "sudo_gid": 5}), 1000, 1000, "nobody"
    ) == (1000, 1000)


def test_the_root_group_is_refused_from_sudo_and_from_a_peer() -> None:
    with pytest.raises(DynodError, match="root group"):
        launch.dyno_user(RunRequest.parse("app", {"sudo_uid": 1000, "sudo_gid": 0}), 0, 0, "nobody")
    with pytest.raises(DynodError, match="root group"):
        launch.dyno_user(RunRequest.parse("app", {}), 1000, 0, "nobody")
    assert launch.dyno_user(
        RunRequest.parse("app", {"sudo_uid": 1000, "sudo_gid": 1000}), 0, 0, "nobody"
    ) == (1000, 1000)
