"""`--explain` proved by replaying it: the commands the CLI printed (and `dynod explain daemon`)
are run with `sh` on a throwaway prefix, and the kernel objects they make are compared with the
daemon's, modulo names: links (kind, master, flags, MTU, MAC, bridge settings), bridge port flags,
addresses, routes (host and each namespace), sysctls, FDB entries, and the nftables tables with
every chain, rule and set element."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynod.cli.explain import HEADER, NOTHING
from tests.support import DaemonProc, running_daemon, sweep, template_mounts, unique_prefix

pytestmark = pytest.mark.root

NETNS_SYSCTLS = (
    "net.ipv4.ping_group_range",
    "net.ipv6.conf.all.disable_ipv6",
    "net.ipv6.conf.default.disable_ipv6",
    "net.ipv6.conf.lo.disable_ipv6",
    "net.ipv6.conf.eth0.disable_ipv6",
)
LINK_SYSCTLS = ("net.ipv6.conf.{}.disable_ipv6", "net.ipv4.conf.{}.arp_ignore")


# ---------------------------------------------------------------- the printed commands
def explained(output: str) -> str:
    """The commands a `--explain` printed: everything after its header line."""
    assert HEADER in output, output
    return output.split(HEADER + "\n", 1)[1]


def cli_commands(d: DaemonProc, *args: str, cwd: str | None = None) -> str:
    result = d.cli(args[0], "--explain", *args[1:], cwd=cwd)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return explained(result.stdout)


def startup_commands(d: DaemonProc) -> str:
    result = d.cli("explain", "daemon")
    assert result.returncode == 0, result.stderr
    return explained(result.stdout)


def replay(script: str, old: str, new: str) -> None:
    """The script with every `old` prefix made `new`, run by sh. The directories the daemon's
    claim made (its state directory's output/) are made for the copy first. A namespace's id
    (`ip netns set NAME NSID`, netns/nsid.py) is the host's to give once: the daemon's namespace
    still has it, so the copy's takes one the kernel finds free (`auto`; ids are not compared)."""
    script = re.sub(r"^(ip netns set \S+) \d+$", r"\1 auto", script.replace(old, new), flags=re.M)
    for directory in set(re.findall(r">>(\S+)/[^/\s]+\.out ", script)):
        os.makedirs(directory, exist_ok=True)
    result = subprocess.run(
        ["sh", "-e"], input=script, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, (result.stderr, script)


# ---------------------------------------------------------------- what the kernel holds
def _json(*argv: str) -> Any:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout
    return json.loads(out) if out.strip() else []


def _links(where: list[str], keep: Any) -> list[dict[str, Any]]:
    found = []
    for link in _json("ip", *where, "-j", "-d", "link", "show"):
        if not keep(link["ifname"]):
            continue
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        slave = info.get("info_slave_data", {}) if info.get("info_slave_kind") == "bridge" else {}
        found.append(
            {
                "name": link["ifname"],
                "kind": info.get("info_kind"),
                "master": link.get("master"),
                "flags": sorted(link["flags"]),
                "mtu": link["mtu"],
                "address": link.get("address"),
                "bridge": {k: data.get(k) for k in ("stp_state", "forward_delay")}
                if info.get("info_kind") == "bridge"
                else None,
                "port": {k: slave.get(k) for k in ("isolated", "learning", "flood")},
            }
        )
    return sorted(found, key=lambda x: x["name"])


def _addresses(where: list[str], names: set[str]) -> list[tuple[str, ...]]:
    found = []
    for link in _json("ip", *where, "-j", "addr", "show"):
        if link["ifname"] not in names:
            continue
        for a in link.get("addr_info", []):
            found.append((link["ifname"], a["family"], a["local"], str(a["prefixlen"]), a["scope"]))
    return sorted(found)


def _routes(where: list[str], names: set[str]) -> list[str]:
    found = []
    for table in ("main", "local"):
        for r in _json("ip", *where, "-j", "route", "show", "table", table):
            if r.get("dev") in names:
                found.append(json.dumps({k: r.get(k) for k in sorted(r)}, sort_keys=True))
    return sorted(found)


def _pinned(where: list[str], names: set[str]) -> list[tuple[str, str, str]]:
    """The permanent neighbour entries on those links: (link, address, MAC)."""
    found = []
    for n in _json("ip", *where, "-j", "-4", "neigh", "show", "nud", "permanent"):
        if n.get("dev") in names:
            found.append((n["dev"], n["dst"], n.get("lladdr", "")))
    return sorted(found)


def _sysctl(where: list[str], key: str) -> str:
    argv = (
        ["ip", "netns", "exec", where[1], "sysctl", "-n", key] if where else ["sysctl", "-n", key]
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    return result.stdout.strip() if result.returncode == 0 else f"missing: {key}"


def _fdb(bridge: str) -> list[str]:
    return sorted(
        json.dumps(entry, sort_keys=True)
        for entry in _json("bridge", "-j", "fdb", "show", "br", bridge)
    )


def _nft(prefix: str) -> list[str]:
    found = []
    for family in ("bridge", "inet"):
        for item in _json("nft", "-j", "list", "table", family, prefix)["nftables"]:
            if "metainfo" in item:
                continue
            found.append(json.dumps(_no_handles(item), sort_keys=True))
    return found


def _no_handles(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"packets", "bytes"}:
            return {"packets": 0, "bytes": 0}
        return {k: _no_handles(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_no_handles(v) for v in value]
    return value


def kernel_objects(prefix: str) -> dict[str, Any]:
    """Everything the objects named after prefix hold, with the prefix written as PREFIX."""
    ours = lambda name: name.startswith(prefix)  # noqa: E731
    host_links = _links([], ours)
    names = {link["name"] for link in host_links}
    bridges = [link["name"] for link in host_links if link["kind"] == "bridge"]
    found: dict[str, Any] = {
        "links": host_links,
        "addresses": _addresses([], names),
        "routes": _routes([], names),
        "neighbours": _pinned([], names),
        "sysctls": {n: [_sysctl([], k.format(n)) for k in LINK_SYSCTLS] for n in sorted(names)},
        "fdb": {b: _fdb(b) for b in bridges},
        "nft": _nft(prefix),
        "namespaces": {},
    }
    for ns in sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix)):
        where = ["-n", ns]
        links = _links(where, lambda _: True)
        inner = {link["name"] for link in links}
        found["namespaces"][ns] = {
            "links": links,
            "addresses": _addresses(where, inner),
            "routes": _routes(where, inner),
            "neighbours": _pinned(where, inner),
            "sysctls": [_sysctl(where, k) for k in NETNS_SYSCTLS],
        }
    return json.loads(json.dumps(found).replace(prefix, "PREFIX"))


# ---------------------------------------------------------------- clean-up of the copy
@contextlib.contextmanager
def throwaway_copy(old: str) -> Iterator[tuple[str, list[str]]]:
    """A prefix for the replay of the daemon's (`old`) commands, and a list the test fills with
    the scripts to replay: whatever happens, the copy's namespaces (and their processes), links,
    tables, cgroups and directories (the scripts' paths, with the copy's prefix) go."""
    new = unique_prefix()
    scripts: list[str] = []
    try:
        yield new, scripts
    finally:
        sweep(new)
        text = "\n".join(scripts).replace(old, new)  # what replay() ran
        for directory in reversed(re.findall(r"^mkdir -p (/sys/fs/cgroup/\S+)$", text, re.M)):
            _remove_cgroup(directory)
        for path in set(re.findall(r"(/tmp/dynod-" + new + r"-[^/\s]+)/", text)):
            shutil.rmtree(path, ignore_errors=True)


def _remove_cgroup(directory: str) -> None:
    deadline = time.monotonic() + 5
    while os.path.isdir(directory):
        with contextlib.suppress(OSError, ValueError):
            for pid in Path(directory, "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            os.rmdir(directory)
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def app_dir() -> str:
    """A directory the dynos run in whose path holds no prefix (it is the same for the copy)."""
    path = tempfile.mkdtemp(prefix="dynod-explain-app-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


def hand_over_gateways(old: str) -> dict[str, Any]:
    """The daemon's objects (kernel_objects), then its dynos' gateways' routes deleted: a
    gateway is the host's by a local route (netns/addresses.py add_gateway), which one device
    alone may hold, and the copy's replay makes the same on its own bridges. The daemon's stop
    finds them gone, which it takes as done."""
    held = kernel_objects(old)
    for bridge in (link["name"] for link in held["links"] if link["kind"] == "bridge"):
        bridge = bridge.replace("PREFIX", old)
        for r in _json("ip", "-j", "route", "show", "dev", bridge, "proto", "static"):
            subprocess.run(["ip", "route", "del", r["dst"], "dev", bridge], check=True)
        for r in _json("ip", "-j", "route", "show", "table", "local", "dev", bridge):
            if r.get("protocol") == "static":
                argv = ["ip", "route", "del", "local", r["dst"], "dev", bridge, "table", "local"]
                subprocess.run(argv, check=True)
    return held


def same_objects(daemon: dict[str, Any], new: str) -> None:
    """daemon: what hand_over_gateways found."""
    copy = kernel_objects(new)
    assert daemon["links"], "the daemon made no links: nothing was compared"
    assert sorted(copy["namespaces"]) == sorted(daemon["namespaces"])
    for key in daemon:
        if key == "namespaces":
            for ns, held in daemon[key].items():
                for what in held:
                    assert copy[key][ns][what] == held[what], (
                        ns,
                        what,
                        copy[key][ns][what],
                        held[what],
                    )
        else:
            assert copy[key] == daemon[key], (key, copy[key], daemon[key])


# ---------------------------------------------------------------- the tests
def test_a_common_runtime_web_dyno_replayed_makes_the_same_objects() -> None:
    cwd = app_dir()
    try:
        with running_daemon() as d, throwaway_copy(d.prefix) as (new, scripts):
            scripts.append(startup_commands(d))
            scripts.append(
                cli_commands(
                    d,
                    "run",
                    "--app",
                    "sushi",
                    "--detach",
                    "--",
                    "python3 -m http.server $PORT",
                    cwd=cwd,
                )
            )
            daemon = hand_over_gateways(d.prefix)
            for script in scripts:
                assert "\nip " in "\n" + script
                replay(script, d.prefix, new)
            assert [ns for ns in daemon["namespaces"]] == ["PREFIX-sushi.web.1"]
            # the dynos' mount template, made by the replayed start-up, entered by its dyno
            made = [p.replace(d.prefix, new) for p in template_mounts(d.prefix)]
            assert made and template_mounts(new) == made
            assert any(link["port"]["isolated"] for link in daemon["links"])
            assert daemon["neighbours"] and daemon["namespaces"]["PREFIX-sushi.web.1"]["neighbours"]
            same_objects(daemon, new)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def test_a_private_space_with_two_dynos_and_a_trusted_ip_replayed_makes_the_same_objects() -> None:
    cwd = app_dir()
    try:
        with running_daemon() as d, throwaway_copy(d.prefix) as (new, scripts):
            scripts.append(startup_commands(d))
            scripts.append(cli_commands(d, "spaces:create", "acme"))
            created = d.cli("apps:create", "menu", "--space", "acme")
            assert created.returncode == 0, created.stderr
            scripts.append(
                cli_commands(
                    d,
                    "run",
                    "--app",
                    "menu",
                    "--detach",
                    "--",
                    "python3 -m http.server $PORT",
                    cwd=cwd,
                )
            )
            scripts.append(
                cli_commands(
                    d,
                    "run",
                    "--app",
                    "menu",
                    "--type",
                    "worker",
                    "--detach",
                    "--",
                    "sleep 600",
                    cwd=cwd,
                )
            )
            trusted = d.cli("trusted-ips:add", "203.0.113.0/24", "--space", "acme", "--explain")
            assert trusted.returncode == 0, trusted.stderr
            # the router alone enforces trusted ranges: nothing in the kernel changes
            assert trusted.stdout.splitlines()[-1] == NOTHING, trusted.stdout
            daemon = hand_over_gateways(d.prefix)
            for script in scripts:
                replay(script, d.prefix, new)
            assert sorted(daemon["namespaces"]) == ["PREFIX-menu.web.1", "PREFIX-menu.worker.1"]
            assert len([k for k, v in daemon["fdb"].items() if v]) >= 2  # both bridges
            same_objects(daemon, new)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)


def test_a_foreground_run_prints_its_commands_on_stderr_once_started() -> None:
    cwd = app_dir()
    try:
        with running_daemon() as d:
            result = d.cli(
                "run", "--app", "once", "--type", "job", "--explain", "--", "echo hi", cwd=cwd
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "hi"
            commands = explained(result.stderr)
            assert "ip netns add " in commands and "setpriv --reuid=" in commands
            assert "unshare --pid --fork" in commands
            assert f"nsenter --mount=/run/dynod-{d.prefix}/mnt -- " in commands
            assert "mount -a -T " in commands
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
