"""`dynod`: the command line. Every command but `daemon` talks to the daemon's API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.parse
from typing import Any

import click

from dynod import names
from dynod.client import Client
from dynod.config import DEFAULT_STATE_DIR, Config, socket_path
from dynod.errors import DynodError

# Variables of the caller's environment a dyno inherits; everything else comes from --env.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["socket"])


def _fail(exc: DynodError) -> None:
    click.echo(f"error: {exc.problem}", err=True)
    if exc.fix:
        click.echo(f"fix: {exc.fix}", err=True)
    sys.exit(1)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DynodError as exc:
            _fail(exc)


@click.group(cls=_Group)
@click.option(
    "--socket",
    default=socket_path,
    show_default="$DYNOD_SOCKET or /run/dynod.sock",
    help="The daemon's API socket.",
)
@click.pass_context
def main(ctx: click.Context, socket: str) -> None:
    """Heroku's dyno networking on one Linux machine."""
    ctx.ensure_object(dict)
    ctx.obj["socket"] = socket


@main.command()
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True)
@click.option(
    "--prefix",
    default="dynod",
    show_default=True,
    help="Start of every kernel object's name (2-6 letters/digits).",
)
@click.option(
    "--cidr",
    default=Config.cidr,
    show_default=True,
    help="The Common Runtime range; each dyno gets a /30 of it.",
)
@click.option("--router-host", default="0.0.0.0", show_default=True)
@click.option("--router-port", default=5000, show_default=True, type=int)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds from SIGTERM to SIGKILL when a dyno stops.",
)
@click.option(
    "--boot-timeout",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds a web dyno has to bind $PORT (R10).",
)
@click.option(
    "--dyno-user",
    default="nobody",
    show_default=True,
    help="Who dynos run as when root runs `dynod run` outside sudo.",
)
@click.option("--no-restart", is_flag=True, help="Do not restart crashed dynos.")
@click.option("--quiet", is_flag=True, help="Do not print the log on stderr.")
@click.pass_context
def daemon(
    ctx: click.Context,
    state_dir: str,
    prefix: str,
    cidr: str,
    router_host: str,
    router_port: int,
    grace: float,
    boot_timeout: float,
    dyno_user: str,
    no_restart: bool,
    quiet: bool,
) -> None:
    """Run the root daemon in the foreground (Ctrl-C stops it and every dyno)."""
    from dynod.daemon import Daemon

    try:
        config = Config(
            state_dir=state_dir,
            socket=ctx.obj["socket"],
            prefix=prefix,
            cidr=cidr,
            router_host=router_host,
            router_port=router_port,
            grace=grace,
            boot_timeout=boot_timeout,
            dyno_user=dyno_user,
            echo_logs=not quiet,
            restart_crashed=not no_restart,
        )
        asyncio.run(Daemon(config).serve())
    except ValueError as exc:
        _fail(DynodError(str(exc), "see `dynod daemon --help`"))
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE
            _fail(
                DynodError(
                    f"the router's port is taken: {exc.strerror}",
                    "stop what uses it, or pass --router-port",
                )
            )
        raise


def _read_procfile(ptype: str) -> str:
    try:
        with open("Procfile") as f:
            commands = names.parse_procfile(f.read())
    except FileNotFoundError:
        raise DynodError(
            f"no command given and no Procfile in {os.getcwd()}",
            "give the command after --, or run from the directory with the Procfile",
        ) from None
    if ptype not in commands:
        known = ", ".join(sorted(commands)) or "none"
        raise DynodError(
            f"the Procfile has no {ptype!r} process type (it has: {known})",
            "add a line `TYPE: command` to the Procfile, or give the command after --",
        )
    return commands[ptype]


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise DynodError(f"invalid --env {pair!r}", "write --env NAME=VALUE")
        env[key] = value
    return env


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--app", "-a", required=True, help="The app (created if new).")
@click.option("--type", "ptype", default="web", show_default=True, help="The process type.")
@click.option("--detach", "-d", is_flag=True, help="Start it and return at once.")
@click.option("--env", "-e", "env", multiple=True, help="NAME=VALUE, for the dyno.")
@click.option("--json", "as_json", is_flag=True, help="With --detach: print the dyno as JSON.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    app: str,
    ptype: str,
    detach: bool,
    env: tuple[str, ...],
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Start a dyno running COMMAND through /bin/sh -c (so '$PORT' expands inside the dyno).

    Without a command, the type's line from ./Procfile runs.
    """
    names.check_app(app)
    names.check_process_type(ptype)
    # Joined with spaces, as `heroku run` does: `-- python3 -m http.server '$PORT'` reaches
    # the dyno's shell as `python3 -m http.server $PORT`.
    line = " ".join(command) if command else _read_procfile(ptype)
    body: dict[str, Any] = {
        "type": ptype,
        "command": line,
        "cwd": os.getcwd(),
        "env": _parse_env(env),
        "detach": detach,
    }
    if os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
        body["sudo_uid"] = int(os.environ["SUDO_UID"])
        body["sudo_gid"] = int(os.environ.get("SUDO_GID", os.environ["SUDO_UID"]))
    client = _client(ctx)
    if not detach:
        sys.exit(_run_foreground(client, app, body))
    dyno = client.call("POST", f"/v1/apps/{app}/dynos", body)
    if as_json:
        click.echo(json.dumps(dyno))
    else:
        port = f" PORT={dyno['port']}" if dyno.get("port") else ""
        click.echo(f"{dyno['name']} {dyno['ip']}{port}")


def _run_foreground(client: Client, app: str, body: dict[str, Any]) -> int:
    """Stream the dyno's output; Ctrl-C stops it. Returns the exit status to exit with."""
    name = ""
    try:
        for raw in client.lines(f"/v1/apps/{app}/dynos", "POST", body):
            message = json.loads(raw)
            if "dyno" in message:
                name = message["dyno"]["name"]
            elif "line" in message:
                click.echo(message["line"])
            elif "exit" in message:
                status = message["exit"]
                return status if isinstance(status, int) and status >= 0 else 1
    except KeyboardInterrupt:
        # Closing the stream stops the dyno; the DELETE waits until it is gone.
        click.echo(f"\nstopping {name or 'the dyno'}...", err=True)
        if name:
            # a second Ctrl-C stops waiting, not the stop: the stream's end stops the dyno too
            with contextlib.suppress(DynodError, KeyboardInterrupt):
                client.call("DELETE", f"/v1/apps/{app}/dynos/{name}")
        return 130
    click.echo(
        "error: the daemon closed the stream before the dyno exited; a restarted daemon "
        f"stops it (`dynod ps --app {app}` shows whether it still runs)",
        err=True,
    )
    return 1


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@main.command()
@click.option("--app", "-a", help="Only this app's dynos.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ps(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """List dynos: name, state, private IP, port, pid, uptime."""
    query = f"?app={urllib.parse.quote(app)}" if app else ""
    dynos = _client(ctx).call("GET", f"/v1/dynos{query}")
    if as_json:
        click.echo(json.dumps(dynos, indent=2))
        return
    if not dynos:
        click.echo("no dynos" + (f" in {app}" if app else ""))
        return
    header = f"{'APP':<30} {'DYNO':<16} {'STATE':<9} {'IP':<15} {'PORT':<6} {'PID':<8} UPTIME"
    click.echo(header)
    for d in dynos:
        click.echo(
            f"{d['app']:<30} {d['name']:<16} {d['state']:<9} {d['ip']:<15} "
            f"{d['port'] or '-'!s:<6} {d['pid'] or '-'!s:<8} {_uptime(d['uptime'])}"
        )


@main.command()
@click.option("--app", "-a", required=True)
@click.option("--grace", type=float, help="Seconds from SIGTERM to SIGKILL (daemon default 30).")
@click.argument("dyno", required=False)
@click.pass_context
def stop(ctx: click.Context, app: str, grace: float | None, dyno: str | None) -> None:
    """Stop one dyno (web.1) or, without a name, all of the app's dynos."""
    names.check_app(app)
    if dyno:
        names.parse_dyno_name(dyno)
    path = f"/v1/apps/{app}/dynos" + (f"/{dyno}" if dyno else "")
    if grace is not None:
        path += f"?grace={grace}"
    stopped = _client(ctx).call("DELETE", path)["stopped"]
    click.echo(f"stopped {', '.join(stopped)}" if stopped else f"{app} had no dynos")


@main.command()
@click.option("--app", "-a")
@click.option("--dyno", help="Only this dyno's lines (web.1) or the router's (router).")
@click.option("--num", "-n", default=100, show_default=True, help="Lines of history.")
@click.option("--tail", "-t", "follow", is_flag=True, help="Keep following new lines.")
@click.pass_context
def logs(ctx: click.Context, app: str | None, dyno: str | None, num: int, follow: bool) -> None:
    """Show the log in Heroku's format: app[web.1], heroku[web.1], heroku[router]."""
    query = {"tail": str(num), "follow": "1" if follow else "0"}
    if app:
        query["app"] = app
    if dyno:
        query["dyno"] = dyno
    try:
        for line in _client(ctx).lines("/v1/logs?" + urllib.parse.urlencode(query)):
            click.echo(line.decode(errors="replace"), nl=False)
    except KeyboardInterrupt:
        pass


@main.command()
@click.pass_context
def apps(ctx: click.Context) -> None:
    """List apps."""
    for app in _client(ctx).call("GET", "/v1/apps"):
        click.echo(f"{app['name']:<30} {app['dynos']} dyno(s)")


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Is the daemon running, and with which settings."""
    started = time.monotonic()
    info = _client(ctx).call("GET", "/v1/status")
    for key, value in info.items():
        click.echo(f"{key:<10} {value}")
    click.echo(f"{'answered':<10} in {1000 * (time.monotonic() - started):.1f} ms")
