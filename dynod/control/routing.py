"""Pushes the router's route table: whoever changes what the router needs (a web dyno's state,
an app, a space, a space's trusted IP ranges) calls this, and the whole table is built anew from
the state and handed to the router. The router never asks the state per request."""

from __future__ import annotations

from collections.abc import Callable

from dynod.router.routes import RouteTable
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

    def publish(self) -> None:
        """Build the whole table from the state now and hand it to the router."""
        spaces = [s.name for s in self._state.spaces() if s.name in self._open]
        table = RouteTable.build(
            self._state.apps(),
            self._state.dynos(),
            {name: self._space_network(name)[0] for name in spaces},
            {name: self._state.trusted_ips(name) for name in spaces},
        )
        self._update(table)

    def dyno_changed(self, dyno: Dyno) -> None:
        """The supervisor's callback (a state change, a dyno forgotten): only web dynos serve
        requests, so the others change nothing the router reads."""
        if dyno.type == names.WEB_TYPE:
            self.publish()

    def space_opened(self, name: str) -> None:
        self._open.add(name)
        self.publish()

    def space_closed(self, name: str) -> None:
        self._open.discard(name)
        self.publish()
