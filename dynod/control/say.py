"""The supervisor's voice, handed to each of its watchers (boot, exits, health, memory): a
`heroku[TYPE.N]` line in the dyno's app's log, as Heroku's dyno manager writes them
(`State changed from up to crashed`)."""

from __future__ import annotations

from collections.abc import Callable

from dynod.state.store import Dyno

__all__ = ["Say"]

Say = Callable[[Dyno, str], None]
