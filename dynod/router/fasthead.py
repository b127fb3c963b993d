"""A request head on the fast path (`dynod.router.fast`): parsed by httptools (llhttp), and
whether the fast path takes it. It takes a whole, bodyless HTTP/1.1 head in origin form with one
Host, not HEAD or CONNECT, without Transfer-Encoding, Upgrade or Expect, Content-Length absent or
0, its request line exactly `METHOD SP target SP HTTP/1.1 CRLF`, and free of what
`headers.strict_head_problem` refuses (obs-fold, bare LF). It refuses nothing
itself: a head it does not take goes to the proven h11 path, which answers it."""

from __future__ import annotations

import httptools

from dynod.router.headers import Headers

__all__ = ["RequestHead"]

# Headers that take a request off the fast path (lowercased).
_SLOW_HEADERS = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_SLOW_METHODS = frozenset({b"CONNECT", b"HEAD"})


class RequestHead:
    """The last head parsed; one per client connection (the parser keeps llhttp's state)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.method = b""
        self.url = b""
        self.headers: Headers = []
        self.lowers: list[bytes] = []  # the header names, lowercased
        self.host = b""
        self.ids: list[bytes] = []  # X-Request-Id values
        self.keep = True  # no Connection: close
        self._whole = False

    def parse(self, head: bytes) -> bool:
        """Parse `head` (up to its blank line); True if the fast path takes it."""
        if head[0] in b"\r\n" or b"\r\n " in head or b"\r\n\t" in head:
            return False  # leading empty lines, obs-fold: the proven path decides
        if head.count(b"\n") != head.count(b"\r\n"):
            return False  # a bare LF (`strict_head_problem`'s two rules, without regexes)
        self.url, self.headers, self._whole = b"", [], False
        try:
            self.parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False
        if not self._whole or self.parser.get_http_version() != "1.1":
            return False  # a body follows, or HTTP/1.0: the proven path
        self.method = self.parser.get_method()
        if self.method in _SLOW_METHODS or not self.url.startswith(b"/"):
            return False
        if not head.startswith(b"%s %s HTTP/1.1\r\n" % (self.method, self.url)):
            return False  # llhttp's leniencies in the request line (`GET  /`): h11's 400
        hosts = 0
        self.lowers = lowers = []
        self.ids = ids = []
        for name, value in self.headers:
            lower = name.lower()
            lowers.append(lower)
            if lower in _SLOW_HEADERS or (lower == b"content-length" and value != b"0"):
                return False
            if lower == b"host":
                hosts += 1
                self.host = value
            elif lower == b"x-request-id":
                ids.append(value)
        return hosts == 1

    # -- httptools callbacks --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, llhttp has forgotten `Connection: close`.
        self.keep = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._whole = True
