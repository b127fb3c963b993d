"""`dynod trace FROM TO [tcp|udp|icmp] [PORT]`: one real probe and the path nftables saw.
Registered on the `main` group at the bottom of cli/main.py (this module does not import it)."""

from __future__ import annotations

import json
import sys

import click

from dynod.cli import explain
from dynod.errors import DynodError
from dynod.trace.path import Report, format_report
from dynod.trace.spec import DEFAULT_WAIT, TraceRequest, parse_words, with_app


@click.command()
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.argument("words", nargs=-1, metavar="[tcp|udp|icmp] [PORT]")
@click.option("--app", "-a", help="The app of FROM and TO written as TYPE.N (web.1).")
@click.option(
    "--wait",
    default=DEFAULT_WAIT,
    show_default=True,
    type=float,
    help="Seconds the probe waits for an answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def trace(
    ctx: click.Context,
    source: str,
    target: str,
    words: tuple[str, ...],
    app: str | None,
    wait: float,
    as_json: bool,
) -> None:
    """Send one real probe from FROM to TO and show each hook, table, chain and rule of
    nftables it met, the verdict and why.

    FROM and TO: a dyno (sushi/web.1, or web.1 with --app), host, router or an IPv4 address.
    The protocol is tcp unless given; PORT is TO's $PORT for a web dyno, 53 for the host.
    """
    protocol, port = parse_words(words)
    request = TraceRequest.checked(
        with_app(source, app), with_app(target, app), protocol, port, wait
    )
    client = explain.client(ctx)
    answer: dict[str, object] | None = None
    try:
        for raw in client.lines("/v1/traces", "POST", request.to_body()):
            answer = json.loads(raw)
    except KeyboardInterrupt:
        # closing the stream makes the daemon cancel the trace and remove its tables
        click.echo("\ntrace cancelled", err=True)
        sys.exit(130)
    if answer is None:
        raise DynodError(
            "the daemon closed the trace without an answer", "see the daemon's log", 500
        )
    if "error" in answer:
        raise DynodError(str(answer["error"]), str(answer.get("fix", "")))
    data = answer["report"]
    assert isinstance(data, dict)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(format_report(Report.from_json(data)))
