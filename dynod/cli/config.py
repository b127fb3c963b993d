"""`dynod config`, `config:set`, `config:unset`, `config:get`: an app's config vars, printed as
the heroku CLI prints them (`=== APP Config Vars`, aligned `NAME: value`; `--shell`, `--json`).

cli/main.py adds COMMANDS to its group (this module does not import it: no cycle); errors are
printed as `error:`/`fix:` by that group."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

from dynod.api.client import api_path
from dynod.cli.explain import client
from dynod.errors import DynodError
from dynod.rules import names
from dynod.rules.configvars import check_changes, check_name, parse_assignments

_client = client


def _fetch(ctx: click.Context, app: str) -> dict[str, str]:
    names.check_app(app)
    found: dict[str, str] = _client(ctx).call("GET", api_path("apps", app, "config-vars"))["vars"]
    return found


def _visible(value: str) -> str:
    """A value for a person to read: control characters (an escape sequence set by whoever set
    the var) are shown escaped instead of driving the reader's terminal; newlines stay."""
    return "".join(c if c == "\n" or c.isprintable() or c == "\t" else repr(c)[1:-1] for c in value)


def _exact(text: str) -> None:
    """Print as it is: click.echo would strip escape sequences when stdout is not a terminal,
    and `config:get X > file` or `eval "$(dynod config --shell)"` must give the stored bytes."""
    click.echo(text, color=True)


def styled(variables: dict[str, str]) -> list[str]:
    """`NAME: value` with the values in one column; a value's further lines are indented to it."""
    width = max((len(k) for k in variables), default=0) + 2
    lines = []
    for name, value in variables.items():
        first, *rest = _visible(value).split("\n")
        lines.append(f"{name + ':':<{width}}{first}".rstrip())
        lines.extend(" " * width + line for line in rest)
    return lines


def shell_lines(variables: dict[str, str]) -> list[str]:
    """`NAME=value` lines a shell can `eval` or a .env file can hold: values quoted when needed."""
    return [f"{name}={shlex.quote(value)}" for name, value in variables.items()]


@click.command()
@click.option("--app", "-a", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the vars as a JSON object.")
@click.option("--shell", "-s", is_flag=True, help="Print NAME=value lines for a shell.")
@click.pass_context
def config(ctx: click.Context, app: str, as_json: bool, shell: bool) -> None:
    """Show the app's config vars."""
    variables = _fetch(ctx, app)
    if as_json:
        click.echo(json.dumps(variables, indent=2))
    elif shell:
        for line in shell_lines(variables):
            _exact(line)
    else:
        click.echo(f"=== {app} Config Vars\n")
        for line in styled(variables):
            click.echo(line)


@click.command("config:get")
@click.option("--app", "-a", required=True)
@click.option("--shell", "-s", is_flag=True, help="Print NAME=value.")
@click.argument("name")
@click.pass_context
def config_get(ctx: click.Context, app: str, shell: bool, name: str) -> None:
    """Print one config var's value as it is (an empty line when it is not set)."""
    check_name(name)
    value = _fetch(ctx, app).get(name, "")
    _exact(shell_lines({name: value})[0] if shell else value)


def _change(ctx: click.Context, app: str, changes: dict[str, str | None], verb: str) -> Any:
    names.check_app(app)
    check_changes(changes)
    click.echo(f"{verb} {', '.join(changes)} and restarting {app}... ", nl=False, err=True)
    try:
        done = _client(ctx).call("PATCH", api_path("apps", app, "config-vars"), changes)
    except DynodError:
        click.echo("failed", err=True)  # the error follows on its own line
        raise
    except KeyboardInterrupt:
        # The daemon may have stored the change already (it restarts the dynos after): say so
        # rather than a bare "Aborted!".
        click.echo("interrupted", err=True)
        raise DynodError(
            "interrupted while the daemon was applying the change: it may be stored, and the "
            "app's dynos restarting",
            f"`dynod config --app {app}` shows the vars as stored",
        ) from None
    click.echo(f"done, v{done['version']}", err=True)
    return done


@click.command("config:set")
@click.option("--app", "-a", required=True)
@click.argument("assignments", nargs=-1, required=True)
@click.pass_context
def config_set(ctx: click.Context, app: str, assignments: tuple[str, ...]) -> None:
    """Set NAME=VALUE vars (a value may hold '=' and newlines) and restart the app's dynos."""
    given = parse_assignments(assignments)
    _change(ctx, app, dict(given), "Setting")
    for line in styled(given):
        click.echo(line)


@click.command("config:unset")
@click.option("--app", "-a", required=True)
@click.argument("names_", metavar="NAME...", nargs=-1, required=True)
@click.pass_context
def config_unset(ctx: click.Context, app: str, names_: tuple[str, ...]) -> None:
    """Unset vars and restart the app's dynos."""
    _change(ctx, app, {check_name(n): None for n in names_}, "Unsetting")


COMMANDS = (config, config_get, config_set, config_unset)
