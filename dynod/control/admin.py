"""The admin lock: creating and destroying spaces and apps wait for one another, so a space is
never destroyed while an app is being created in it, and two creations never pick one name."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Administered(Protocol):
    admin: asyncio.Lock


def administrative(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Run the service method under its admin lock (one lock shared by every service)."""

    @functools.wraps(method)
    async def locked(self: Administered, *args: Any, **kwargs: Any) -> T:
        async with self.admin:
            return await method(self, *args, **kwargs)

    return locked
