"""`dynod ps`, `ps:scale`, `ps:restart`, `ps:stop`, `ps:wait` and `apps:info`: an app's
formation, the Heroku way. The CLI reads the Procfile (from the app's directory) and sends its
commands; the daemon stores them with the formation and converges."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from typing import Any

import click

from dynod.api.client import Client, api_path
from dynod.cli.main import _client, _echo_json, _memory, main
from dynod.errors import DynodError
from dynod.rules import formation, names, procfile
from dynod.rules.caller import inherited_env, sudo_ids


def size_label(size: str | None) -> str:
    """Heroku's spelling: standard-1x -> Standard-1X, performance-l-ram -> Performance-L-RAM."""
    if not size:
        return "no size"
    first, *rest = size.split("-")
    return "-".join([first.capitalize(), *(part.upper() for part in rest)])


def since(stamp: float | None, now: float | None = None) -> str:
    """`2026/11/25 21:00:00 +0000 (~ 3m ago)`, as `heroku ps` shows a state's start."""
    if not stamp:
        return "-"
    now = time.time() if now is None else now
    ago = max(0, int(now - stamp))
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if ago >= seconds:
            ago_text = f"{ago // seconds}{unit}"
            break
    else:
        ago_text = f"{ago}s"
    clock = time.strftime("%Y/%m/%d %H:%M:%S +0000", time.gmtime(stamp))
    return f"{clock} (~ {ago_text} ago)"


def dyno_line(d: dict[str, Any], with_command: bool) -> str:
    size = f" ({size_label(d.get('size'))})" if with_command else ""
    command = f": {d['command']}" if with_command else ""
    where = f"{d['ip']}:{d['port']}" if d.get("port") else d["ip"]
    stamp = d.get("started_at") or d.get("created_at")
    return (
        f"{d['name']}{size}: {d['state']} {since(stamp)}{command}  "
        f"{where}  pid {d.get('pid') or '-'}  mem {_memory(d)}"
    )


def render(
    app_prefix: str, processes: list[dict[str, Any]], dynos: list[dict[str, Any]]
) -> list[str]:
    """One app's `dynos ps`: each type of the formation with its command and count, then its
    dynos; then the dynos outside the formation, by type."""
    lines: list[str] = []
    for p in processes:
        mine = [d for d in dynos if d.get("formation") and d["type"] == p["type"]]
        if not p["quantity"] and not mine:
            continue
        lines.append(
            f"=== {app_prefix}{p['type']} ({size_label(p['size'])}): {p['command']} "
            f"({p['quantity']})"
        )
        lines += [dyno_line(d, False) for d in mine]
        lines.append("")
    others = [d for d in dynos if not d.get("formation")]
    for ptype in sorted({d["type"] for d in others}):
        mine = [d for d in others if d["type"] == ptype]
        kind = "one-off processes" if ptype == names.ONE_OFF_TYPE else "outside the formation"
        lines.append(f"=== {app_prefix}{ptype}: {kind} ({len(mine)})")
        lines += [dyno_line(d, True) for d in mine]
        lines.append("")
    return lines


@main.command()
@click.option("--app", "-a", help="Only this app's dynos.")
@click.option("--json", "as_json", is_flag=True, help="The dynos as JSON (a list, one per dyno).")
@click.pass_context
def ps(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """List the formation and the dynos: per type its command and count, then each dyno's
    state and since when, address, pid and memory."""
    client = _client(ctx)
    query = f"?app={urllib.parse.quote(app)}" if app else ""
    dynos = client.call("GET", f"/v1/dynos{query}")
    if as_json:
        _echo_json(dynos)
        return
    # Every app's formation in one call (not one per app), the dynos grouped in one pass.
    formations = {app: client.formation(app)} if app else client.formations()
    running = {d["app"] for d in dynos} | {
        name for name, processes in formations.items() if any(p["quantity"] for p in processes)
    }
    apps = [app] if app else sorted(running)
    by_app: dict[str, list[dict[str, Any]]] = {}
    for dyno in dynos:
        by_app.setdefault(dyno["app"], []).append(dyno)
    lines: list[str] = []
    for name in apps:
        prefix = "" if app else f"{name}: "
        lines += render(prefix, formations.get(name, []), by_app.get(name, []))
    if not any(lines):
        click.echo("no dynos" + (f" in {app}" if app else ""))
        return
    click.echo("\n".join(lines).rstrip())


def _app_dir(client: Client, app: str) -> str:
    """Where the app's Procfile is: its recorded directory, else here."""
    info = client.call("GET", api_path("apps", app))
    return str(info.get("dir") or os.getcwd())


def _summary(processes: list[dict[str, Any]]) -> str:
    return (
        ", ".join(f"{p['type']} at {p['quantity']}:{size_label(p['size'])}" for p in processes)
        or "no process types"
    )


@main.command("ps:scale")
@click.argument("changes", nargs=-1)
@click.option("--app", "-a", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the formation as JSON.")
@click.pass_context
def ps_scale(ctx: click.Context, changes: tuple[str, ...], app: str, as_json: bool) -> None:
    """Scale process types: web=2 worker+1 clock-1 web=2:standard-2x (all or nothing).

    The commands come from the Procfile in the app's directory (`apps:create --dir`). Without
    changes, show the formation.
    """
    names.check_app(app)
    client = _client(ctx)
    parsed = formation.parse_changes(changes)
    if not parsed:
        current = client.formation(app)
        if as_json:
            _echo_json(current)
        else:
            click.echo(
                " ".join(f"{p['type']}={p['quantity']}:{size_label(p['size'])}" for p in current)
                or f"{app} has no formation (`dynod ps:scale web=1 --app {app}` starts one)"
            )
        return
    directory = _app_dir(client, app)
    try:
        commands = procfile.read(directory)
    except DynodError:
        if any(c.quantity != 0 and c.delta >= 0 for c in parsed):
            raise
        commands = {}  # scaling down needs no Procfile (the stored commands stay)
    env = inherited_env()
    updates = [c.to_json() for c in parsed]
    result = client.scale(app, updates, commands, directory, env, sudo_ids())
    if as_json:
        _echo_json(result)
    else:
        click.echo(f"Scaling dynos... done, now running {_summary(result)}")


@main.command("ps:restart")
@click.argument("target", required=False)
@click.option("--app", "-a", required=True)
@click.pass_context
def ps_restart(ctx: click.Context, target: str | None, app: str) -> None:
    """Restart a dyno (web.1), every dyno of a type (web), or, without TARGET, the app's."""
    names.check_app(app)
    _check_target(target)
    restarted = _client(ctx).restart(app, target)
    if restarted:
        click.echo(f"restarted {', '.join(restarted)}")
    elif target:  # named, but stopping or gone by the time its turn came
        click.echo(f"{target}: nothing to restart (stopping or stopped)")
    else:
        click.echo(f"{app} had no dynos")


@main.command("ps:stop")
@click.argument("target")
@click.option("--app", "-a", required=True)
@click.pass_context
def ps_stop(ctx: click.Context, target: str, app: str) -> None:
    """Stop a dyno (web.1) or every dyno of a type (web). The formation starts its own again,
    as on Heroku: `ps:scale TYPE=0` stops them for good."""
    names.check_app(app)
    _check_target(target)
    result = _client(ctx).stop_dynos(app, target)
    click.echo(f"stopped {', '.join(result['stopped'])}")
    if result["replaced"]:
        click.echo(
            f"the formation starts {', '.join(result['replaced'])} again; "
            f"`dynod ps:scale TYPE=N --app {app}` changes how many run"
        )


def _check_target(target: str | None) -> None:
    if not target:
        return
    if "." in target:
        names.parse_dyno_name(target)
    else:
        names.check_process_type(target)


@main.command("ps:wait")
@click.option("--app", "-a", required=True)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0, 86400),
    help="Seconds to wait.",
)
@click.pass_context
def ps_wait(ctx: click.Context, app: str, timeout: float) -> None:
    """Wait until every dyno of the app is up, web dynos listening on PORT. Exits 1 (with the
    failing dyno's last log lines) on a crash or when the time is up."""
    names.check_app(app)
    result = _client(ctx).wait(app, timeout)
    if result["ready"]:
        click.echo(f"{app}: up ({', '.join(result['dynos']) or 'no dynos'})")
        return
    click.echo(f"error: {result['problem']}", err=True)
    if result["log"]:
        click.echo(f"--- the last log lines of {result['dyno'] or app}:", err=True)
        click.echo("\n".join(result["log"]), err=True)
    click.echo(f"fix: `dynod logs --app {app}` and `dynod ps --app {app}` say more", err=True)
    sys.exit(1)


@main.command("apps:info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def apps_info(ctx: click.Context, name: str, as_json: bool) -> None:
    """An app: its space, routing, directory (where its Procfile is), formation and dynos."""
    names.check_app(name)
    client = _client(ctx)
    info = client.call("GET", api_path("apps", name))
    info["formation"] = client.formation(name)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"=== {name}")
    click.echo(f"Space:     {info['space'] or 'common runtime'}")
    click.echo(f"Routing:   {'internal' if info['internal_routing'] else 'external'}")
    click.echo(f"Directory: {info.get('dir') or '-'}")
    click.echo(f"Formation: {_summary(info['formation'])}")
    click.echo(f"Dynos:     {info['dynos']}")
