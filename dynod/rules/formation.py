"""A formation's rules: how `ps:scale` arguments read (`web=2`, `web+1`, `web-1`,
`web=2:standard-2x`) and the cap on the dynos of one app.

The cap is Heroku's default limit of 100 dynos per app ("Limits", Dev Center,
devcenter.heroku.com/articles/limits#dynos: an app scales to at most 100 dynos unless support
raises it); dynod applies it to the app's formation, the sum of its types' quantities.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dynod.errors import DynodError
from dynod.rules import names, sizes

MAX_DYNOS_PER_APP = 100

CHANGE = re.compile(r"^([A-Za-z0-9_-]+)(=|\+|-)([0-9]{1,9})(?::(.+))?$")


@dataclass(frozen=True)
class Change:
    """One argument of `ps:scale`: set the quantity (`=`) or move it by `delta` (`+`, `-`);
    a size only with `=`."""

    type: str
    quantity: int | None = None
    delta: int = 0
    size: str | None = None

    def apply(self, current: int) -> int:
        return self.quantity if self.quantity is not None else current + self.delta

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"type": self.type}
        if self.quantity is not None:
            data["quantity"] = self.quantity
        else:
            data["delta"] = self.delta
        if self.size is not None:
            data["size"] = self.size
        return data


def check_type(ptype: str) -> str:
    """A process type a formation can hold: not `release`, not the one-off dynos' `run`."""
    names.check_process_type(ptype)
    if ptype == names.ONE_OFF_TYPE:
        raise DynodError(
            "run is the name of one-off dynos (`dynod run`), not a process type to scale",
            "rename the Procfile's `run:` line, e.g. to `runner:`",
        )
    return ptype


def parse_change(text: str) -> Change:
    match = CHANGE.fullmatch(text or "")
    if not match:
        raise DynodError(
            f"cannot read {text!r} as a scale",
            "write TYPE=N, TYPE+N or TYPE-N, optionally TYPE=N:SIZE (web=2 worker+1 "
            "web=1:standard-2x)",
        )
    ptype, sign, number, size = match.groups()
    check_type(ptype)
    if size is not None:
        if sign != "=":
            raise DynodError(f"{text!r}: a size goes with =N only", f"write {ptype}=N:{size}")
        size = sizes.parse(size).name
    if sign == "=":
        return Change(ptype, quantity=int(number), size=size)
    return Change(ptype, delta=int(number) if sign == "+" else -int(number))


def parse_changes(texts: Iterable[str]) -> list[Change]:
    return distinct([parse_change(t) for t in texts])


def distinct(changes: list[Change]) -> list[Change]:
    """`changes`, refused if one type comes twice (`web=2 web+1`: which one is meant?)."""
    seen: set[str] = set()
    for change in changes:
        if change.type in seen:
            raise DynodError(f"{change.type} is scaled twice", "give each type once")
        seen.add(change.type)
    return changes


def apply(current: Mapping[str, int], changes: Iterable[Change]) -> dict[str, int]:
    """The new quantities, all checked: none negative, the app's total within the cap."""
    new = dict(current)
    for change in changes:
        quantity = change.apply(new.get(change.type, 0))
        if quantity < 0:
            raise DynodError(
                f"{change.type} would have {quantity} dynos (it has {new.get(change.type, 0)})",
                f"scale to 0 or more: {change.type}=0 stops them all",
            )
        new[change.type] = quantity
    total = sum(new.values())
    if total > MAX_DYNOS_PER_APP:
        raise DynodError(
            f"the app would have {total} dynos; an app has at most {MAX_DYNOS_PER_APP} "
            "(Heroku's default limit)",
            f"scale to {MAX_DYNOS_PER_APP} dynos or fewer in all",
        )
    return new
