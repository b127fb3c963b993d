"""The shard size kept with the state (dynod/control/shard_setting.py). No root needed."""

from __future__ import annotations

import os
import stat

import pytest

from dynod.control import shard_setting
from dynod.errors import DynodError
from dynod.kernel.addressing import SHARD_PORTS


def test_another_size_is_refused_only_while_dynos_of_the_state_run(tmp_path: object) -> None:
    state_dir = str(tmp_path)
    assert shard_setting.recorded(state_dir) is None
    shard_setting.keep(state_dir, 1000, dynos=0)  # a new state: recorded
    assert shard_setting.recorded(state_dir) == 1000
    assert stat.S_IMODE(os.stat(os.path.join(state_dir, "shard-ports")).st_mode) == 0o600
    shard_setting.keep(state_dir, 1000, dynos=5)  # the same size: fine
    with pytest.raises(DynodError) as refused:
        shard_setting.keep(state_dir, 2, dynos=5)
    assert "--shard-ports 1000" in refused.value.fix
    assert shard_setting.recorded(state_dir) == 1000  # nothing changed
    shard_setting.keep(state_dir, 2, dynos=0)  # no dyno to misplace: the new size holds
    assert shard_setting.recorded(state_dir) == 2


def test_the_size_given_else_the_states_else_the_default(tmp_path: object) -> None:
    """A daemon started without --shard-ports keeps the state's size (an upgrade to another
    default must not be refused, nor place new dynos elsewhere); a new state gets the default."""
    state_dir = str(tmp_path)
    assert shard_setting.chosen(state_dir, None) == SHARD_PORTS
    assert shard_setting.chosen(state_dir, 7) == 7
    shard_setting.keep(state_dir, 1000, dynos=3)
    assert shard_setting.chosen(state_dir, None) == 1000
    assert shard_setting.chosen(state_dir, 7) == 7  # given: keep() then decides


def test_a_state_from_before_the_size_was_recorded_keeps_1000(tmp_path: object) -> None:
    """Its dynos were placed on bridges of 1,000 (the default then): an upgraded daemon
    started without --shard-ports must look for them there, not on bridges of 256."""
    state_dir = str(tmp_path)
    open(os.path.join(state_dir, shard_setting.DB_FILE), "w").close()
    assert shard_setting.chosen(state_dir, None) == 1000
    shard_setting.keep(state_dir, 1000, dynos=4)
    assert shard_setting.chosen(state_dir, None) == 1000
