"""nftables through libnftables, in-process: one call is one atomic kernel transaction.

`Nft().run(text)` is `nft -f FILE` with FILE's text, without the fork and exec. Everything in one
text is committed together or not at all, so the firewall is never half-updated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from netns import descriptors, record

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
NFT_CTX_OUTPUT_JSON = 1 << 4
NFT_CTX_OUTPUT_TERSE = 1 << 11  # `nft -t`: sets without their elements


class NftError(RuntimeError):
    """nft refused a command; the message is nft's own, with the offending line."""


class NoLowDescriptor(NftError):
    """No descriptor below 1024 is free for a new context's socket (netns/descriptors.py)."""


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise NftError(
            "libnftables is missing: install it with `apt-get install nftables` "
            "(it ships libnftables1)"
        ) from exc
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


class Nft:
    """One libnftables context. Not shared between threads: each call holds a lock."""

    def __init__(self) -> None:
        self._lib = _load()
        # The context opens its netlink socket now, and libmnl select()s on it at every
        # command: a number above 1023 would abort the process there (netns/descriptors.py).
        if not descriptors.low_one_free():
            raise NoLowDescriptor(
                f"no file descriptor below {descriptors.FD_SETSIZE} is free, and libnftables "
                "cannot use a larger one"
            )
        self._ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, text: str, *, as_json: bool = False, handles: bool = False) -> str:
        """Run nft commands (one transaction); returns nft's output, raises NftError on error.
        handles: `nft -a -t`, each rule with its handle and sets without their elements."""
        flags = NFT_CTX_OUTPUT_JSON if as_json else 0
        if handles:
            flags |= NFT_CTX_OUTPUT_HANDLE | NFT_CTX_OUTPUT_TERSE
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(err.strip() or f"nft failed (rc={rc})")
        # Listings are asked for as JSON, or with handles (a trace's `nft -a -t list ruleset`):
        # anything else changed the kernel.
        if not (as_json or handles) and record.active():
            record.note_text(record.here_document("nft -f -", text, "NFT"))
        return out

    def ruleset(self) -> list[dict[str, Any]]:
        """`nft -j list ruleset`, parsed: the list under "nftables"."""
        return json.loads(self.run("list ruleset", as_json=True) or '{"nftables": []}')["nftables"]

    def tables(self) -> list[tuple[str, str]]:
        """`nft list tables`: (family, name) pairs."""
        return [
            (item["table"]["family"], item["table"]["name"])
            for item in json.loads(self.run("list tables", as_json=True) or '{"nftables": []}')[
                "nftables"
            ]
            if "table" in item
        ]

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def element_key(value: object) -> str:
    """One set or map element, as `nft -j list` shows it, in a form that compares equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class Snapshot:
    """What some tables hold, as `nft -j list table` shows it, minus what changes by itself
    (handles, counters): `structure` is every table, chain, set and rule in order, `elements`
    the elements of each set and map, keyed "family name"."""

    structure: list[str] = field(default_factory=list)
    elements: dict[str, set[str]] = field(default_factory=dict)

    def add(self, family: str, name: str, key: str) -> None:
        self.elements.setdefault(f"{family} {name}", set()).add(key)

    def discard(self, family: str, name: str, key: str) -> None:
        self.elements.setdefault(f"{family} {name}", set()).discard(key)


def snapshot(nft: Nft, tables: list[tuple[str, str]]) -> Snapshot | None:
    """`nft -j list table FAMILY NAME` for each table, normalized; None when one is missing."""
    found = Snapshot()
    for family, name in tables:
        listing = _listed(nft, f"table {family} {name}")
        if listing is None:
            return None
        for item in listing:
            if "metainfo" in item:
                continue
            kind, body = next(iter(item.items()))
            body = {k: v for k, v in body.items() if k != "handle"}
            if kind in ("set", "map"):
                elements = found.elements.setdefault(f"{family} {body['name']}", set())
                elements.update(element_key(e) for e in body.pop("elem", []))
            found.structure.append(element_key({kind: _without_counts(body)}))
    return found


def set_elements(nft: Nft, family: str, table: str, name: str) -> set[str] | None:
    """`nft -j list set FAMILY TABLE NAME`: its elements keyed as snapshot() keys them; None
    when the set or its table is missing (a map is not a set: `list map`, not read here)."""
    for item in _listed(nft, f"set {family} {table} {name}") or []:
        if "set" in item:
            return {element_key(e) for e in item["set"].get("elem", [])}
    return None


def _listed(nft: Nft, what: str) -> list[dict[str, Any]] | None:
    """`nft -j list WHAT`'s items; None when WHAT is missing."""
    try:
        listing: list[dict[str, Any]] = json.loads(nft.run(f"list {what}", as_json=True))[
            "nftables"
        ]
    except NftError:
        return None
    return listing


def _without_counts(value: Any) -> Any:
    """The value with every counter's packets and bytes set to 0."""
    if isinstance(value, dict):
        if set(value) == {"packets", "bytes"}:
            return {"packets": 0, "bytes": 0}
        return {k: _without_counts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_counts(v) for v in value]
    return value
