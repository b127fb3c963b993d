"""What the API's HTTP layer and its endpoints hand each other: a parsed request, an answer
(a status and JSON, or a stream), and the JSON encoding of both."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dynod.errors import DynodError


@dataclass
class Request:
    method: str
    path: list[str]
    query: dict[str, str]
    body: Any
    uid: int
    gid: int
    body_error: DynodError | None = None  # the body could not be read as JSON: why
    upgrade: str = ""  # the protocol the client asked to switch to (Upgrade:), lowercased


@dataclass
class Stream:
    """A streamed answer; `closed` is set when the client goes away."""

    content_type: str
    chunks: Callable[[asyncio.Event], AsyncIterator[bytes]]
    on_close: Callable[[], None] | None = None


@dataclass
class Upgrade:
    """An answer that switches the connection to `protocol` (101 Switching Protocols), then
    hands the raw connection and the bytes already read past the request to `session`;
    `refused` is called instead when the switch cannot be made."""

    protocol: str
    session: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
    refused: Callable[[], None]


Answer = tuple[int, Any] | Stream | Upgrade


def parse_json(body: bytes) -> tuple[Any, DynodError | None]:
    """The body as JSON (an empty body is {}), or the reason it is not."""
    if not body:
        return {}, None
    try:
        return json.loads(body, parse_constant=_not_json), None
    except RecursionError:  # "[[[[...": Python's parser recurses once per level
        return None, DynodError(
            "the request body is JSON nested too deeply",
            "send a JSON object with the endpoint's fields, nested a few levels at most",
        )
    except ValueError:
        return None, DynodError("the request body is not JSON", "send a JSON object")


def _not_json(word: str) -> Any:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such numbers."""
    raise ValueError(f"{word} is not JSON")


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"
