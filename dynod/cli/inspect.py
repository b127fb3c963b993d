"""`dynod inspect`: the live network, read from the kernel by the daemon, drawn as text, DOT,
an image through graphviz, or one self-contained HTML page. cli/main.py adds the command to
its group (this module does not import main, so there is no import cycle)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import click

from dynod.api.client import api_path
from dynod.cli.explain import client
from dynod.errors import DynodError
from dynod.inspect import dot, html, text
from dynod.inspect.model import Topology
from dynod.rules import names

FORMATS = ("text", "dot", "html", "svg", "png", "json")
IMAGES = ("svg", "png")  # made by graphviz's dot from the DOT text


@click.command()
@click.option("--app", "-a", help="Only this app's network and dynos.")
@click.option("--space", "-s", help="Only this space's network and dynos.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: a box drawing; dot: graphviz's input; svg/png: dot's drawing; html: one "
    "self-contained page for a browser; json: the API's answer.",
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Write to this file, not stdout."
)
@click.pass_context
def inspect(
    ctx: click.Context, app: str | None, space: str | None, fmt: str, output: str | None
) -> None:
    """The network as the kernel holds it now: bridges and their ports, veths, each dyno's
    namespace, address and routes, the nftables sets, the DNS names, and every difference from
    the daemon's state (flagged with !)."""
    if app is not None and space is not None:
        raise DynodError("--app and --space both given", "give one of them, or neither")
    if app is not None:
        names.check_app(app)
    if space is not None:
        names.check_space(space)
    data = client(ctx).call("GET", api_path("inspect", app=app, space=space))
    top = Topology.from_json(data)
    if fmt in IMAGES:
        _write(_image(dot.render(top), fmt, output), output)
        return
    rendered = {
        "text": text.render,
        "dot": dot.render,
        "html": html.render,
        "json": lambda t: json.dumps(data, indent=2) + "\n",
    }[fmt](top)
    _write(rendered.encode(), output)


def _image(source: str, fmt: str, output: str | None) -> bytes:
    """`dot -Tsvg` (or png); without graphviz, the DOT text goes out instead, and the error
    says how to get the image."""
    found = shutil.which("dot")
    if found is None:
        _write(source.encode(), output)
        raise DynodError(
            f"graphviz's `dot` is not installed, so no {fmt} was made; the DOT text was "
            f"written instead",
            f"apt-get install graphviz, or paste the DOT text into any graphviz viewer "
            f"(`dot -T{fmt}` makes the image from it)",
        )
    done = subprocess.run(
        [found, f"-T{fmt}"], input=source.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise DynodError(
            f"dot failed: {done.stderr.decode(errors='replace').strip()}",
            "use --format dot to see the DOT text",
        )
    return done.stdout


def _write(data: bytes, output: str | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        with open(output, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise DynodError(f"cannot write {output}: {exc.strerror}", "give a writable path") from exc
    click.echo(f"wrote {output}", err=True)
