"""Who a dyno runs as: never root, and never in root's group either."""

from __future__ import annotations

import pytest

from dynod.control import launch
from dynod.errors import DynodError


def test_the_root_group_is_refused_from_sudo_and_from_a_peer() -> None:
    with pytest.raises(DynodError, match="root group"):
        launch.dyno_user({"sudo_uid": 1000, "sudo_gid": 0}, 0, 0, "nobody")
    with pytest.raises(DynodError, match="root group"):
        launch.dyno_user({}, 1000, 0, "nobody")
    assert launch.dyno_user({"sudo_uid": 1000, "sudo_gid": 1000}, 0, 0, "nobody") == (1000, 1000)
