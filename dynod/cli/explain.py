"""`--explain`: print, after a command's normal output, the `ip`, `bridge`, `nft`, `sysctl`,
`unshare`, `mount`, `setpriv` ... commands that do what the daemon just did for it, in order
(recorded by the kernel layer as it performs each call: netns/record.py).

Adding the flag to a command is one line, under its `@main.command(...)`:

    @main.command("ps:scale")
    @explain_option
    @click.option(...)
    def ps_scale(ctx, ...): ...

The command's API calls go through `_client(ctx)` as usual: the client asks for the commands
(`?explain=1`) and hands them here. A streamed answer (a foreground `run`) prints its commands
on stderr as soon as they arrive, when the dyno has started, since the command's own output is
the dyno's and runs until it exits.

`dynod explain daemon` prints what the running daemon's start-up did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dynod.api.client import Client
from dynod.api.explain import HEADER, NOTHING, render  # noqa: F401  (HEADER, NOTHING: tests)


def client(ctx: click.Context) -> Client:
    """The API client of every command: the `main` group's --socket, and the commands the
    daemon ran given to `--explain` when the command takes it."""
    return Client(ctx.obj["socket"], explain=ctx.obj.get("explain"))


F = TypeVar("F", bound=Callable[..., Any])


class Explanation:
    """The commands the API answered with, printed once the command is done."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.heard = False

    def add(self, commands: list[str]) -> None:
        self.heard = True
        self.pending.extend(commands)

    def streamed(self, commands: list[str]) -> None:
        click.echo(render(commands), err=True)

    def flush(self) -> None:
        if self.heard:
            click.echo(render(self.pending))
        self.pending, self.heard = [], False


def explain_option(command: F) -> F:
    """The `--explain` flag: the command's API calls ask for their commands, printed after the
    command's own output (also when it fails)."""

    @click.option(
        "--explain",
        is_flag=True,
        help="Also print the ip/bridge/nft/sysctl/... commands that do what dynod did.",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, explain: bool, **kwargs: Any) -> Any:
        if not explain:
            return command(*args, **kwargs)
        ctx = click.get_current_context()
        sink = Explanation()
        ctx.ensure_object(dict)["explain"] = sink
        try:
            return command(*args, **kwargs)
        finally:
            sink.flush()

    return wrapper  # type: ignore[return-value]


@click.group("explain")
def explain_group() -> None:
    """What dynod did in the kernel, as commands (see also --explain on each command)."""


@explain_group.command("daemon")
@click.pass_context
def explain_daemon(ctx: click.Context) -> None:
    """The commands the running daemon's start-up did (its bridge, sysctls, firewall...)."""
    commands = client(ctx).call("GET", "/v1/explain/daemon")
    click.echo(render(commands))
