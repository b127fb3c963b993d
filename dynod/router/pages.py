"""The answers the router writes itself, without a dyno: error pages (503 with Heroku's code,
404 "no such app", 403 trusted IP ranges, H25's 400) and the answer to an unreadable request."""

from __future__ import annotations

import h11

from dynod.router.frames import page
from dynod.router.logline import HerokuError
from dynod.router.peer import Peer, reason

__all__ = ["send_error_page", "send_rejection"]


async def send_error_page(
    client: Peer,
    status: int,
    error: HerokuError | None,
    timeout: float,
    text: bytes = b"no such app\n",
) -> None:
    """`text` as plain text when there is no Heroku error, else Heroku's HTML error page;
    nothing when the response has already (partly) gone out: all that is left is to close."""
    if client.conn.our_state is not h11.SEND_RESPONSE:
        return
    body, headers = page(error, text)
    if client.conn.their_state is not h11.DONE:
        headers.append((b"Connection", b"close"))  # unread request body: we will hang up
    await client.send(
        h11.Response(status_code=status, reason=reason(status), headers=headers),
        timeout=timeout,
    )
    await client.send(h11.Data(data=body), timeout=timeout)
    await client.send(h11.EndOfMessage(), timeout=timeout)


async def send_rejection(client: Peer, status: int, timeout: float) -> None:
    """Answer a request the router could not read (400, 431, 408), then close."""
    if client.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = reason(status).lower() + b"\n"  # "bad request", "request timeout"
    await client.send(
        h11.Response(
            status_code=status,
            reason=reason(status),
            headers=[
                (b"Content-Type", b"text/plain"),
                (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"),
            ],
        ),
        timeout=timeout,
    )
    await client.send(h11.Data(data=body), timeout=timeout)
    await client.send(h11.EndOfMessage(), timeout=timeout)
