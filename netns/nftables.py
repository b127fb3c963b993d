"""nftables through libnftables, in-process: one call is one atomic kernel transaction.

`Nft().run(text)` is `nft -f FILE` with FILE's text, without the fork and exec. Everything in one
text is committed together or not at all, so the firewall is never half-updated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
from typing import Any

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    """nft refused a command; the message is nft's own, with the offending line."""


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
        self._ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, text: str, *, as_json: bool = False) -> str:
        """Run nft commands (one transaction); returns nft's output, raises NftError on error."""
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON if as_json else 0)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(err.strip() or f"nft failed (rc={rc})")
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
