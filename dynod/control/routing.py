"""Pushes the router's route table: whoever changes what the router needs (a web dyno's state,
an app, a space, a space's trusted IP ranges) calls this, and the table is handed to the router.
An app, a space or trusted ranges build the whole table anew from the state; one web dyno's
change (the frequent one: 4,000 dynos start and stop) only moves that dyno in or out of its
app's backends, so it costs the same however many dynos run. The router never asks the state
per request."""

from __future__ import annotations

from collections.abc import Callable

from dynod.router.routes import RouteTable, backend
from dynod.rules import names
from dynod.state.store import Dyno, State


class RoutePublisher:
    def __init__(
        self,
        state: State,
        space_network: Callable[[str], tuple[str, str]],
        update: Callable[[RouteTable], None],
    ) -> None:
        """space_network(space) gives an open space's (CIDR, bridge address); update receives
        each new table (Router.update)."""
        self._state = state
        self._space_network = space_network
        self._update = update
        # Spaces whose bridge, DNS and router are up: a space being created or destroyed has
        # no range in the table, so nobody is inside it (as before it opens).
        self._open: set[str] = set()
        self._table: RouteTable | None = None  # the last one handed over

    def publish(self) -> None:
        """Build the whole table from the state now and hand it to the router."""
        spaces = [s.name for s in self._state.spaces() if s.name in self._open]
        table = RouteTable.build(
            self._state.apps(),
            self._state.dynos(),
            {name: self._space_network(name)[0] for name in spaces},
            {name: self._state.trusted_ips(name) for name in spaces},
        )
        self._table = table
        self._update(table)

    def dyno_changed(self, dyno: Dyno) -> None:
        """The supervisor's callback (a state change, a dyno forgotten): only web dynos serve
        requests, so the others change nothing the router reads. The dyno's row as it is now
        (None: forgotten) says whether it serves."""
        if dyno.type != names.WEB_TYPE:
            return
        if self._table is None or dyno.app not in self._table.apps:
            self.publish()
            return
        now = self._state.dyno(dyno.id)
        self._table = self._table.with_dyno(dyno.app, dyno.name, backend(now) if now else None)
        self._update(self._table)

    def space_opened(self, name: str) -> None:
        self._open.add(name)
        self.publish()

    def space_closed(self, name: str) -> None:
        self._open.discard(name)
        self.publish()
