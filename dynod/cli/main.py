"""`dynod`: the command line. Every command but `daemon` talks to the daemon's API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import click

from dynod.api.client import Client, api_path
from dynod.cli.command import build_command
from dynod.cli.explain import client, explain_group, explain_option
from dynod.config import DEFAULT_STATE_DIR, Config, socket_path
from dynod.control import shard_setting
from dynod.errors import DynodError
from dynod.kernel.addressing import BRIDGE_PORT_LIMIT
from dynod.rules import names, procfile, sizes
from dynod.rules.caller import inherited_env, sudo_ids

_client = client  # (cli/explain.py: the commands of other modules use it too)


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
    "--router-workers",
    default=None,
    type=click.IntRange(0, 64),
    help="Router worker processes [default: one per core]; 0: in the daemon's own loop.",
)
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
@click.option(
    "--upstream",
    multiple=True,
    metavar="IP[:PORT]",
    help="DNS resolver that names outside .localspace are forwarded to; default: the "
    "nameservers of /etc/resolv.conf. Repeat for more than one.",
)
@click.option(
    "--health-interval",
    default=Config.health_interval,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between checks that no dyno's namespace or veth was removed.",
)
@click.option(
    "--metrics-interval",
    default=Config.metrics_interval,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between samples of each dyno's memory (R14, R15 logs).",
)
@click.option(
    "--shard-ports",
    type=click.IntRange(min=1, max=BRIDGE_PORT_LIMIT),
    help="Dynos per bridge: a network (the Common Runtime, a space) is sharded over bridges "
    f"of this many ports (a bridge takes at most 1,023). Default: the state's size, else "
    f"{Config.shard_ports}.",
)
@click.option("--no-restart", is_flag=True, help="Do not restart crashed dynos.")
@click.option(
    "--no-firewall-guard",
    is_flag=True,
    help="Do not re-apply the firewall when someone else changes it (to break it by hand "
    "and watch `dynod inspect` flag it).",
)
@click.option("--quiet", is_flag=True, help="Do not print the log on stderr.")
@click.pass_context
def daemon(
    ctx: click.Context,
    state_dir: str,
    prefix: str,
    cidr: str,
    router_host: str,
    router_port: int,
    router_workers: int | None,
    grace: float,
    boot_timeout: float,
    dyno_user: str,
    upstream: tuple[str, ...],
    health_interval: float,
    metrics_interval: float,
    shard_ports: int | None,
    no_restart: bool,
    no_firewall_guard: bool,
    quiet: bool,
) -> None:
    """Run the root daemon in the foreground (Ctrl-C stops it and every dyno)."""
    for resolver in upstream:
        names.parse_upstream(resolver)
    from dynod.compose import serve

    try:
        config = Config(  # absolute paths: the daemon's kernel thread works from / (mntns.py)
            state_dir=os.path.abspath(state_dir),
            socket=os.path.abspath(ctx.obj["socket"]),
            prefix=prefix,
            cidr=cidr,
            router_host=router_host,
            router_port=router_port,
            router_workers=os.cpu_count() or 1 if router_workers is None else router_workers,
            grace=grace,
            boot_timeout=boot_timeout,
            dyno_user=dyno_user,
            upstreams=list(upstream),
            echo_logs=not quiet,
            restart_crashed=not no_restart,
            health_interval=health_interval,
            metrics_interval=metrics_interval,
            firewall_guard=not no_firewall_guard,
            shard_ports=shard_setting.chosen(state_dir, shard_ports),
        )
        asyncio.run(serve(config))
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
    """The type's command in ./Procfile (`dynod run` without a command)."""
    here = os.getcwd()
    return procfile.command(procfile.read(here), ptype, here)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--env NAME=VALUE`s: the dyno's own variables, over the app's config vars."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise DynodError(f"invalid --env {pair!r}", "write --env NAME=VALUE")
        env[key] = value
    return env


@main.command(context_settings={"ignore_unknown_options": True})
@explain_option
@click.option("--app", "-a", required=True, help="The app (created if new).")
@click.option(
    "--type",
    "ptype",
    help="A process dyno of this type (web with --detach); without it and --detach, a one-off "
    "run.N attached to the terminal.",
)
@click.option("--detach", "-d", is_flag=True, help="Start it and return at once.")
@click.option("--no-tty", is_flag=True, help="One-off: pipes, even when stdin is a terminal.")
@click.option("--env", "-e", "env", multiple=True, help="NAME=VALUE, for the dyno.")
@click.option("--json", "as_json", is_flag=True, help="With --detach: print the dyno as JSON.")
@click.option(
    "--size",
    "-s",
    help=f"Heroku's dyno size: memory, processes, CPU share ({sizes.DEFAULT} if not given): "
    + ", ".join(sizes.SIZES)
    + ".",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    app: str,
    ptype: str | None,
    detach: bool,
    no_tty: bool,
    env: tuple[str, ...],
    as_json: bool,
    size: str | None,
    command: tuple[str, ...],
) -> None:
    """Start a dyno running COMMAND through /bin/sh -c (so '$PORT' expands inside the dyno).

    Without a command, the type's line from ./Procfile runs. As with `heroku run`, one word is
    the whole command line; of several, words with a space or a '"' are double-quoted.
    Without --type and --detach, a one-off dyno run.N: stdin is forwarded, and on a terminal
    it gets a terminal of its own.
    """
    names.check_app(app)
    one_off = ptype is None and not detach
    if one_off and not command:
        raise DynodError(
            "a one-off dyno needs a command",
            "give it after --, e.g. `dynod run --app APP -- bash`; or --type TYPE to run the "
            "Procfile's line for TYPE",
        )
    ptype = ptype or names.WEB_TYPE
    names.check_process_type(ptype)
    line = build_command(command) if command else _read_procfile(ptype)
    body: dict[str, Any] = {
        "type": ptype,
        "command": line,
        "cwd": os.getcwd(),
        "env": _parse_env(env),
        "inherited": inherited_env(),  # under the config vars
        "detach": detach,
    }
    if size is not None:
        body["size"] = sizes.parse(size).name
    if (sudo := sudo_ids()) is not None:
        body["sudo_uid"], body["sudo_gid"] = sudo
    if one_off:
        from dynod.cli import oneoff

        del body["type"], body["detach"]
        path = api_path("apps", app, "dynos")
        sys.exit(oneoff.run_attached(ctx.obj["socket"], path, body, oneoff.wants_tty(no_tty)))
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
            elif "lines" in message:
                click.echo("\n".join(message["lines"]))
            elif "line" in message:  # a notice about the stream (L10): not the dyno's output
                click.echo(message["line"], err=True)
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


def _memory(dyno: dict[str, Any]) -> str:
    """`123M/512M` (now / the size's quota), as Heroku's mem= counts: MB."""
    used, quota = dyno.get("memory_mb"), dyno.get("memory_quota_mb")
    if used is None:
        return "-"
    return f"{int(used)}M" + (f"/{quota}M" if quota else "")


@main.command()
@explain_option
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


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def _cell(value: Any) -> str:
    """A table cell: lists joined with commas, nothing as '-'."""
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    return "-" if value is None or value == "" else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _check_confirm(kind: str, name: str, confirm: str | None) -> None:
    """`--confirm NAME` is optional; when given, it must name what is being destroyed."""
    if confirm is not None and confirm != name:
        raise DynodError(
            f"--confirm {confirm} does not match the {kind} to destroy, {name}",
            f"give --confirm {name}, or leave --confirm out",
        )


# ---------------------------------------------------------------- spaces
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def spaces(ctx: click.Context, as_json: bool) -> None:
    """List spaces: name, range, bridge, DNS address, NAT address, apps."""
    found = _client(ctx).call("GET", api_path("spaces"))
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no spaces (`dynod spaces:create NAME` creates one)")
        return
    _table(
        ("NAME", "CIDR", "BRIDGE", "DNS", "NAT", "APPS"),
        [(s["name"], s["cidr"], s["bridge"], s["dns"], s["nat_ip"], s["apps"]) for s in found],
    )


@main.command("spaces:create")
@explain_option
@click.argument("name")
@click.option(
    "--cidr",
    metavar="RANGE",
    help="A private /16 for its dynos (default: the next free /16 of 10.0.0.0/8).",
)
@click.option(
    "--nat-ip",
    metavar="ADDR",
    help="The host address its dynos' outbound traffic leaves from "
    "(default: the source address of the host's default route).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the space as JSON.")
@click.pass_context
def spaces_create(
    ctx: click.Context, name: str, cidr: str | None, nat_ip: str | None, as_json: bool
) -> None:
    """Create a Private Space: its own range, bridge, DNS, internal router and NAT address."""
    body: dict[str, Any] = {"name": names.check_space(name)}
    if cidr is not None:
        body["cidr"] = names.check_space_cidr(cidr)
    if nat_ip is not None:
        body["nat_ip"] = names.check_nat_ip(nat_ip)
    space = _client(ctx).call("POST", api_path("spaces"), body)
    if as_json:
        _echo_json(space)
        return
    click.echo(
        f"created space {space['name']}: {space['cidr']}, bridge {space['bridge']}, "
        f"DNS {space['dns']}, router {space['router']}, NAT {space['nat_ip']}"
    )


@main.command("spaces:destroy")
@explain_option
@click.argument("name")
@click.option("--confirm", metavar="NAME", help="Optional: must repeat the space's name.")
@click.pass_context
def spaces_destroy(ctx: click.Context, name: str, confirm: str | None) -> None:
    """Destroy a space that has no apps left.

    `dynod apps:destroy APP` destroys its apps first.
    """
    names.check_space(name)
    _check_confirm("space", name, confirm)
    _client(ctx).call("DELETE", api_path("spaces", name))
    click.echo(f"destroyed space {name}")


# ---------------------------------------------------------------- apps
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def apps(ctx: click.Context, as_json: bool) -> None:
    """List apps: space, routing, enabled features, dynos."""
    found = _client(ctx).call("GET", api_path("apps"))
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo("no apps (`dynod apps:create NAME` or `dynod run --app NAME` creates one)")
        return
    _table(
        ("NAME", "SPACE", "ROUTING", "FEATURES", "DYNOS"),
        [
            (
                a["name"],
                a["space"] or "common runtime",
                "internal" if a["internal_routing"] else "external",
                sorted(f for f, on in a["features"].items() if on),
                a["dynos"],
            )
            for a in found
        ],
    )


@main.command("apps:create")
@click.argument("name")
@click.option(
    "--space", "-s", help="The Private Space to create it in (default: none, the Common Runtime)."
)
@click.option(
    "--internal-routing",
    is_flag=True,
    help="Serve its web dynos only to clients inside its space (needs --space).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Where its Procfile is (default: the current directory).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the app as JSON.")
@click.pass_context
def apps_create(
    ctx: click.Context,
    name: str,
    space: str | None,
    internal_routing: bool,
    directory: str | None,
    as_json: bool,
) -> None:
    """Create an app, in the Common Runtime or in a space.

    An app stays where it is created; so does its routing.
    """
    body: dict[str, Any] = {"name": names.check_app(name)}
    if space is not None:
        body["space"] = names.check_space(space)
    names.check_routing(space, internal_routing)
    if internal_routing:
        body["internal_routing"] = True
    body["dir"] = os.path.abspath(directory or os.getcwd())
    app = _client(ctx).call("POST", api_path("apps"), body)
    if as_json:
        _echo_json(app)
        return
    if not app["space"]:
        click.echo(f"created {app['name']} in the common runtime")
    else:
        routing = " with internal routing" if app["internal_routing"] else ""
        click.echo(f"created {app['name']} in space {app['space']}{routing}")


@main.command("apps:destroy")
@explain_option
@click.argument("name")
@click.option("--confirm", metavar="NAME", help="Optional: must repeat the app's name.")
@click.pass_context
def apps_destroy(ctx: click.Context, name: str, confirm: str | None) -> None:
    """Destroy an app, stopping its dynos first."""
    names.check_app(name)
    _check_confirm("app", name, confirm)
    stopped = _client(ctx).call("DELETE", api_path("apps", name))["stopped"]
    ran = f"stopped {', '.join(stopped)}" if stopped else "it had no dynos"
    click.echo(f"destroyed {name} ({ran})")


# ---------------------------------------------------------------- features
@main.command()
@click.option("--app", "-a", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def features(ctx: click.Context, app: str, as_json: bool) -> None:
    """List an app's features: enabled or disabled, and what each does."""
    names.check_app(app)
    found = _client(ctx).call("GET", api_path("apps", app, "features"))
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo(f"{app} has no features to switch")
        return
    _table(
        ("FEATURE", "STATE", "DESCRIPTION"),
        [(f["name"], "enabled" if f["enabled"] else "disabled", f["description"]) for f in found],
    )


def _set_feature(ctx: click.Context, app: str, feature: str, enabled: bool) -> None:
    names.check_app(app)
    body = {"enabled": enabled}
    result = _client(ctx).call("PUT", api_path("apps", app, "features", feature), body)
    click.echo(f"{'enabled' if result['enabled'] else 'disabled'} {result['name']} on {app}")
    if result.get("note"):
        click.echo(result["note"])


@main.command("features:enable")
@explain_option
@click.argument("feature")
@click.option("--app", "-a", required=True)
@click.pass_context
def features_enable(ctx: click.Context, feature: str, app: str) -> None:
    """Enable a feature on an app.

    `dynod features --app APP` lists the features.
    """
    _set_feature(ctx, app, feature, True)


@main.command("features:disable")
@explain_option
@click.argument("feature")
@click.option("--app", "-a", required=True)
@click.pass_context
def features_disable(ctx: click.Context, feature: str, app: str) -> None:
    """Disable a feature on an app."""
    _set_feature(ctx, app, feature, False)


# ---------------------------------------------------------------- trusted IP ranges
def _echo_ranges(space: str, ranges: list[str]) -> None:
    """After a change: the ranges now trusted, and what that means when it may surprise."""
    if not ranges:
        click.echo(f"{space} trusts no IP ranges now: only clients inside it reach its apps")
        return
    click.echo(f"{space} trusts: {', '.join(ranges)}")
    if "0.0.0.0/0" in ranges and len(ranges) > 1:
        click.echo(
            "note: 0.0.0.0/0 trusts every address, so the other ranges change nothing; "
            f"`dynod trusted-ips:remove 0.0.0.0/0 --space {space}` limits access to them"
        )


@main.command("trusted-ips")
@click.option("--space", "-s", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.pass_context
def trusted_ips(ctx: click.Context, space: str, as_json: bool) -> None:
    """List the IP ranges a space trusts.

    Clients from them may reach the space's apps that do not use internal routing; clients
    inside the space always may.
    """
    names.check_space(space)
    ranges = _client(ctx).call("GET", api_path("spaces", space, "trusted-ips"))
    if as_json:
        _echo_json(ranges)
        return
    if not ranges:
        click.echo(f"{space} trusts no IP ranges: only clients inside it reach its apps")
    for cidr in ranges:
        click.echo(cidr)


@main.command("trusted-ips:add")
@explain_option
@click.argument("cidr")
@click.option("--space", "-s", required=True)
@click.pass_context
def trusted_ips_add(ctx: click.Context, cidr: str, space: str) -> None:
    """Trust an IP range (203.0.113.0/24, or one address).

    Its clients may then reach the space's apps that do not use internal routing.
    """
    names.check_space(space)
    body = {"cidr": names.check_cidr(cidr, "trusted IP range")}
    ranges = _client(ctx).call("POST", api_path("spaces", space, "trusted-ips"), body)
    click.echo(f"added {body['cidr']} to {space}'s trusted IP ranges")
    _echo_ranges(space, ranges)


@main.command("trusted-ips:remove")
@explain_option
@click.argument("cidr")
@click.option("--space", "-s", required=True)
@click.pass_context
def trusted_ips_remove(ctx: click.Context, cidr: str, space: str) -> None:
    """Stop trusting an IP range, as `dynod trusted-ips` lists it."""
    names.check_space(space)
    canonical = names.check_cidr(cidr, "trusted IP range")
    ranges = _client(ctx).call("DELETE", api_path("spaces", space, "trusted-ips", canonical))
    click.echo(f"removed {canonical} from {space}'s trusted IP ranges")
    _echo_ranges(space, ranges)


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Is the daemon running, and with which settings."""
    started = time.monotonic()
    info = _client(ctx).call("GET", "/v1/status")
    for key, value in info.items():
        click.echo(f"{key:<10} {_cell(value)}")
    click.echo(f"{'answered':<10} in {1000 * (time.monotonic() - started):.1f} ms")


# The commands of their own modules: those modules do not import this one (no import cycle).
from dynod.cli.config import COMMANDS as CONFIG_COMMANDS  # noqa: E402
from dynod.cli.inspect import inspect  # noqa: E402
from dynod.cli.trace import trace as _trace  # noqa: E402
from dynod.cli.up import up as _up  # noqa: E402

for _command in (inspect, explain_group, _trace, *CONFIG_COMMANDS, _up):
    main.add_command(_command)
