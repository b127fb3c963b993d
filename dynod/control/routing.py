"""Pushes the router's route table: whoever changes what the router needs (a web dyno's state,
an app, a space, a space's trusted IP ranges) calls this, and the table is handed to the router
with what changed since the last one (the router's worker processes are sent only that).
An app, a space or trusted ranges build the whole table anew from the state, and only the apps
and spaces that differ are pushed; one web dyno's change (the frequent one: 4,000 dynos start
and stop) only moves that dyno in or out of its app's backends, so it costs the same however
many dynos run. A change that moves nothing (a dyno forgotten after `stopping`, `starting`
after `crashed`) pushes nothing. The router never asks the state per request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dynod.router.routes import DynoMoved, RouteChange, RouteTable, backend
from dynod.rules import names
from dynod.state.store import Dyno, State


class RoutePublisher:
    def __init__(
        self,
        state: State,
        space_network: Callable[[str], tuple[str, str]],
        update: Callable[[RouteTable, Sequence[RouteChange]], None],
    ) -> None:
        """space_network(space) gives an open space's (CIDR, bridge address); update receives
        each new table and the changes that made it out of the last one (never none)."""
        self._state = state
        self._space_network = space_network
        self._update = update
        # Spaces whose bridge, DNS and router are up: a space being created or destroyed has
        # no range in the table, so nobody is inside it (as before it opens).
        self._open: set[str] = set()
        self._table = RouteTable()  # the last one handed over (the router starts empty too)

    def publish(self) -> None:
        """Build the whole table from the state now and hand it to the router."""
        spaces = [s.name for s in self._state.spaces() if s.name in self._open]
        table = RouteTable.build(
            self._state.apps(),
            self._state.dynos(),
            {name: self._space_network(name)[0] for name in spaces},
            {name: self._state.trusted_ips(name) for name in spaces},
        )
        self._push(table, self._table.changes_to(table))

    def dyno_changed(self, dyno: Dyno) -> None:
        """The supervisor's callback (a state change, a dyno forgotten): only web dynos serve
        requests, so the others change nothing the router reads. The dyno's row as it is now
        (None: forgotten) says whether it serves."""
        if dyno.type != names.WEB_TYPE:
            return
        if dyno.app not in self._table.apps:
            self.publish()
            return
        now = self._state.dyno(dyno.id)
        serving = backend(now) if now else None
        if self._table.serving(dyno.app, dyno.name) == serving:
            return  # already in (or out) as it is: nothing the router reads changed
        change = DynoMoved(dyno.app, dyno.name, serving)
        self._push(self._table.changed(change), [change])

    def _push(self, table: RouteTable, changes: Sequence[RouteChange]) -> None:
        self._table = table
        if changes:
            self._update(table, changes)

    def space_opened(self, name: str) -> None:
        self._open.add(name)
        self.publish()

    def space_closed(self, name: str) -> None:
        self._open.discard(name)
        self.publish()
