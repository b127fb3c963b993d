"""`dynod up`: run a directory's Procfile the way `heroku local` (foreman, honcho) runs it, but as
dynos: the app (named after the directory) is created if new, `.env` becomes its config vars,
the formation is scaled from the Procfile, and every dyno's output is printed `web.1 | ...`.

As with foreman and honcho, the first dyno of the formation that ends ends the session: `up`
stops them all (scales the formation to 0) and exits with that dyno's status; Ctrl-C (or
SIGTERM) stops them all too and exits 130. `--detach` returns once the dynos are started.

cli/main.py adds `up` to its group (this module does not import it: no import cycle).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import click

from dynod.api.client import Client, api_path
from dynod.cli import explain
from dynod.cli.prefix import Prefixer, parse
from dynod.errors import DynodError
from dynod.rules import configvars, dotenv, names, procfile
from dynod.rules import formation as formation_rules
from dynod.rules.caller import inherited_env, sudo_ids

EXITED = re.compile(r"^Process exited(?: with status (-?\d+))?")
# A dyno that is stopped or restarted on purpose says so before its process ends.
ON_PURPOSE = re.compile(r"^State changed from \S+ to (down|starting)$")
STARTING = re.compile(r"^Starting process\b")
DRAIN_WAIT = 5.0  # seconds `up` waits, once its dynos stopped, for their last lines to be shown


def app_name_for(directory: str) -> str:
    """Heroku's app-name rule applied to a directory's name: lowercase; every run of other
    characters becomes one '-'; what comes before the first letter is dropped; at most 30
    characters; no '-' at the end. `My_Shop 2` -> `my-shop-2`."""
    base = os.path.basename(os.path.abspath(directory)).lower()
    name = names.stem(base)[:30].rstrip("-")
    if len(name) < 3:
        raise DynodError(
            f"the directory's name {base!r} makes no valid app name ({name!r})",
            "give one with --app NAME (3 to 30 lowercase letters, digits and dashes)",
        )
    return names.check_app(name)


def read_env_file(path: str, given: bool) -> dict[str, str]:
    """The .env file's vars; a missing default ./.env is no vars, a missing -e FILE an error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if not given:
            return {}
        raise DynodError(
            f"no env file {path}", "give an existing file with -e, or leave -e out"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DynodError(
            f"cannot read {path}: {exc}", "make it a readable UTF-8 text file"
        ) from None
    found = dotenv.parse(text, path)
    if found:
        configvars.check_changes(dict(found))
    return found


def plan(commands: dict[str, str], args: tuple[str, ...], where: str) -> dict[str, int]:
    """{type: quantity}: TYPE=N arguments, else one dyno of each of the Procfile's types."""
    if not args:
        wanted = {t: 1 for t in commands if t != "release"}
        if not wanted:
            raise DynodError(f"the Procfile {where} has no process types", "add `web: COMMAND`")
        return wanted
    result: dict[str, int] = {}
    for change in formation_rules.parse_changes(args):
        if change.quantity is None or change.size is not None:
            raise DynodError(f"`up` takes TYPE=N, not {change.type}...", "write e.g. web=2")
        procfile.command(commands, change.type, where)  # an unknown type: error naming the types
        result[change.type] = change.quantity
    if not any(result.values()):
        raise DynodError("`up` with every type at 0 runs nothing", "give e.g. web=1")
    return result


@dataclass
class Session:
    """The followed log: prints each line behind its dyno's name and notices the first dyno of
    the formation that ends on its own (a crash, an exit)."""

    prefixer: Prefixer
    since: str  # lines older than this ISO time are history, not this session's
    ended: threading.Event = field(default_factory=threading.Event)
    status: int = 1
    who: str = ""
    stopping: bool = False
    types: frozenset[str] = frozenset()  # the formation's: whose last lines `drained` waits for
    _on_purpose: set[str] = field(default_factory=set)
    # Each dyno of `types` seen: True while its process runs (its "Process exited" not shown).
    _running: dict[str, bool] = field(default_factory=dict)
    _shown: threading.Condition = field(default_factory=threading.Condition)

    def follow(self, client: Client, app: str) -> None:
        query = urllib.parse.urlencode({"app": app, "tail": "1000", "follow": "1"})
        with contextlib.suppress(DynodError, OSError):
            for raw in client.lines(f"/v1/logs?{query}"):
                self.line(raw.decode(errors="replace"))
        if not self.stopping and not self.ended.is_set():
            self.who, self.status = "", 1  # the daemon went away
            self.ended.set()

    def line(self, text: str) -> None:
        parsed = parse(text)
        if parsed is None or parsed.time < self.since:
            return
        shown = f"heroku: {parsed.text}" if parsed.platform else parsed.text
        click.echo(self.prefixer.format(parsed.name, shown))
        sys.stdout.flush()
        self._note_running(parsed.name, parsed.platform, parsed.text)
        if not parsed.platform or self.stopping or self.ended.is_set():
            return
        if ON_PURPOSE.match(parsed.text):
            self._on_purpose.add(parsed.name)
            return
        exited = EXITED.match(parsed.text)
        if not exited:
            return
        if parsed.name in self._on_purpose:  # a restart (config:set, ps:restart): not an end
            self._on_purpose.discard(parsed.name)
            return
        self.who = parsed.name
        self.status = int(exited.group(1)) if exited.group(1) else 1
        self.ended.set()

    def _note_running(self, name: str, platform: bool, text: str) -> None:
        if name.split(".")[0] not in self.types:
            return
        with self._shown:
            if platform and EXITED.match(text):
                self._running[name] = False  # its last output came before this line
                self._shown.notify_all()
            elif platform and STARTING.match(text):
                self._running[name] = True
            else:
                self._running.setdefault(name, True)

    def drained(self, timeout: float) -> bool:
        """After the dynos were stopped (the daemon has logged every line by then): wait until
        each one seen has had its "Process exited" shown, so that its last lines are not cut
        off when `up` returns. False if some had not after `timeout`."""
        with self._shown:
            return self._shown.wait_for(lambda: not any(self._running.values()), timeout)


def ensure_app(client: Client, app: str, space: str | None, directory: str) -> bool:
    """Create the app (its Procfile's directory recorded) unless it exists; True if created."""
    try:
        info = client.call("GET", api_path("apps", app))
    except DynodError as exc:
        if exc.status != 404:
            raise
        body: dict[str, Any] = {"name": app, "dir": directory}
        if space:
            body["space"] = names.check_space(space)
        client.call("POST", api_path("apps"), body)
        return True
    if space and info.get("space") != space:
        raise DynodError(
            f"the app {app} exists outside space {space} (in {info.get('space') or 'none'})",
            "leave --space out to use it, or give another --app",
        )
    return False


def set_config(client: Client, app: str, wanted: dict[str, str]) -> list[str]:
    """Set the .env's vars that differ from the app's (no needless restart); their names."""
    if not wanted:
        return []
    current = client.call("GET", api_path("apps", app, "config-vars"))["vars"]
    changes: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
    if changes:
        client.call("PATCH", api_path("apps", app, "config-vars"), changes)
    return list(changes)


def stop_all(client: Client, app: str, directory: str) -> None:
    """Scale every type of the formation to 0: the daemon stops the dynos and starts none."""
    types = [p["type"] for p in client.formation(app) if p["quantity"]]
    if types:
        updates = [{"type": t, "quantity": 0} for t in types]
        client.scale(app, updates, {}, directory)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("-f", "--procfile", "procfile_path", default="Procfile", show_default=True)
@click.option("-e", "--env", "env_path", help="The env file [default: ./.env if there is one].")
@click.option("--app", "-a", help="The app [default: the directory's name, made valid].")
@click.option("--space", "-s", help="Create the app in this Private Space.")
@click.option("--detach", "-d", is_flag=True, help="Return once the dynos are started.")
@click.argument("formation", nargs=-1, metavar="[TYPE=N]...")
@click.pass_context
def up(
    ctx: click.Context,
    procfile_path: str,
    env_path: str | None,
    app: str | None,
    space: str | None,
    detach: bool,
    formation: tuple[str, ...],
) -> None:
    """Run the Procfile as an app's dynos, as `heroku local` runs it, printing each dyno's
    output behind its name (web.1 | ...).

    The app is the directory's name unless --app says (created if new); .env lines become its
    config vars; TYPE=N args choose the formation (default: one of each type). Ctrl-C stops
    every dyno; so does the end of any one of them, and `up` exits with its status.
    """
    path = os.path.abspath(procfile_path)
    directory = os.path.dirname(path)
    commands = procfile.read_file(
        path, f"no Procfile at {path}", "add one (`web: python3 server.py`), or give -f FILE"
    )
    wanted = plan(commands, formation, path)
    env_vars = read_env_file(env_path or os.path.join(os.getcwd(), ".env"), env_path is not None)
    name = names.check_app(app) if app else app_name_for(directory)
    client = explain.client(ctx)
    if ensure_app(client, name, space, directory):
        click.echo(f"created {name}" + (f" in space {space}" if space else ""), err=True)
    changed = set_config(client, name, env_vars)
    if changed:
        click.echo(f"set {', '.join(changed)} from the env file", err=True)
    sys.exit(_run(client, name, directory, commands, wanted, detach))


def _run(
    client: Client,
    app: str,
    directory: str,
    commands: dict[str, str],
    wanted: dict[str, int],
    detach: bool,
) -> int:
    updates = [{"type": t, "quantity": n} for t, n in wanted.items()]
    env = inherited_env()
    if detach:
        client.scale(app, updates, commands, directory, env, sudo_ids())
        started = ", ".join(f"{t}={n}" for t, n in wanted.items())
        click.echo(f"started {app}: {started}")
        click.echo(f"`dynod ps:wait --app {app}` waits until they are up; `dynod logs -t -a {app}`")
        return 0
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    prefixer = Prefixer(colour)
    prefixer.expect([f"{t}.{i}" for t, n in wanted.items() for i in range(1, n + 1)])
    session = Session(prefixer, _now(), types=frozenset(t for t, n in wanted.items() if n))
    follower = Client(client.socket_path)
    threading.Thread(target=session.follow, args=(follower, app), daemon=True).start()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    status = 130
    try:
        try:
            client.scale(app, updates, commands, directory, env, sudo_ids())
            while not session.ended.wait(0.5):
                pass
            status = session.status
            who = session.who or "the log stream"
            click.echo(f"{who} ended (status {status}): stopping every dyno of {app}", err=True)
        except KeyboardInterrupt:
            click.echo(f"\nstopping every dyno of {app}...", err=True)
        session.stopping = True
        try:
            stop_all(client, app, directory)
            session.drained(DRAIN_WAIT)  # their last lines, which the log stream still carries
        except KeyboardInterrupt:  # a second Ctrl-C stops waiting; the daemon still stops them
            click.echo(f"not waiting; `dynod ps --app {app}` shows them go", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return status


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
