"""Test helpers: a real `dynod daemon` in a subprocess, a fake internet host, and an inventory of
kernel objects so every test can prove it left nothing behind.

Every object a test makes carries a prefix unique to that test (`tst` + hex), and the daemon under
test gets its own prefix, state directory, socket, router port and a /24 of 172.31/16 (inside the
Common Runtime's 172.16/12), so tests never touch a real dynod or anything else on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynod.api.client import Client
from dynod.errors import DynodError
from dynod.kernel.mounts import directory_of
from dynod.testing.daemon import free_port, free_range
from netns import cgroup, mntns, namespace
from netns.exec import in_cgroups

APPS_DIR = Path(__file__).parent / "apps"
PYTHON = "/usr/bin/python3"  # dynos run the system's python: the venv may not be readable
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


# Every prefix this test run handed out: on a shared machine (DYNOD_TESTS_SHARED=1) the suite's
# leak check looks only at objects that carry one of them.
MADE_PREFIXES: set[str] = set()


def unique_prefix() -> str:
    prefix = "tst" + secrets.token_hex(2)[:3]
    MADE_PREFIXES.add(prefix)
    return prefix


def gateway_of(ip: str) -> str:
    """The host-side address of a dyno's /30: the one before the dyno's."""
    head, last = ip.rsplit(".", 1)
    return f"{head}.{int(last) - 1}"


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


# ---------------------------------------------------------------- kernel inventory
def netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def process_netns() -> set[int]:
    """The network namespaces (inodes) that processes are in."""
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                found.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    return found


def lock_files() -> set[str]:
    """The daemons' per-prefix lock files in /run."""
    return {n for n in os.listdir("/run") if n.startswith("dynod-") and n.endswith(".lock")}


def template_mounts(prefix: str) -> list[str]:
    """The mount template of the daemon of that prefix (kernel/mounts.py): its mount points, and
    its directory while it is there."""
    directory = directory_of(prefix)
    found = mntns.mount_points(directory)
    return found + [directory] if os.path.isdir(directory) else found


def named_mounts(prefix: str) -> list[str]:
    """The host's mounts named after the daemon of that prefix (`dynod-PREFIX`: its dynos'
    hosts files' tmpfs, netns/hosts.py in_memory): their mount points."""
    return mntns.mounted_as(f"dynod-{prefix}")


def state_in_memory(state_dir: str) -> bool:
    """Is a daemon's state directory on a tmpfs already (where /tmp is one: Debian 13, Fedora)?
    Then its hosts files need no tmpfs of their own (netns/hosts.py in_memory)."""
    return mntns.mount_of(os.stat(state_dir).st_dev)[0] in namespace.MEMORY_TYPES


def run_mounts() -> set[str]:
    """The daemons' mount templates: mount points and directories /run/dynod-* (`findmnt`)."""
    points = {p for p in mntns.mount_points("/run") if p.startswith("/run/dynod-")}
    return points | {
        os.path.join("/run", n)
        for n in os.listdir("/run")
        if n.startswith("dynod-") and os.path.isdir(os.path.join("/run", n))
    }


def run_dir_mounts() -> set[str]:
    """A daemon's tmpfs on /run/netns (netns/namespace.py names_in_memory), which goes at its
    stop: how many are mounted there (`findmnt /run/netns`). (The bind mount of /run/netns on
    itself that `ip netns add` makes stays, as the command leaves it.)"""
    with open("/proc/self/mountinfo") as f:
        sources = [
            line.split(" - ")[1].split()[1] for line in f if line.split()[4] == namespace.RUN_DIR
        ]
    count = sources.count(namespace.MEMORY_SOURCE)
    return {f"{count} tmpfs {namespace.MEMORY_SOURCE} on {namespace.RUN_DIR}"} if count else set()


def link_names() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def nft_tables() -> set[str]:
    out = sh("nft", "list", "tables").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def bridge_of(netns: str) -> str:
    """The bridge the host end of the namespace's eth0 is a port of (`ip link show` master)."""
    inside = json.loads(sh("ip", "-n", netns, "-j", "link", "show", "eth0").stdout)[0]
    host = json.loads(sh("ip", "-j", "link", "show").stdout)
    return next(link["master"] for link in host if link["ifindex"] == inside["link_index"])


def port_elements(table: str) -> set[tuple[str, str, str]]:
    """The (port, MAC, IP) elements of a daemon's bridge table: whom the firewall lets send."""
    result = sh("nft", "-j", "list", "set", "bridge", table, "ports", check=False)
    if result.returncode != 0:
        return set()  # no such table (yet)
    listing = json.loads(result.stdout)
    found = set()
    for item in listing["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            found.add(tuple(elem["concat"]))
    return found


def leftovers(prefix: str) -> dict[str, list[str]]:
    found = {
        "netns": sorted(n for n in netns_names() if n.startswith(prefix)),
        "links": sorted(n for n in link_names() if n.startswith(prefix)),
        "tables": sorted(t for t in nft_tables() if t.split()[-1].startswith(prefix)),
        "cgroups": sorted(cgroup_names(prefix)),
        "mounts": template_mounts(prefix) + named_mounts(prefix),
    }
    return {k: v for k, v in found.items() if v}


def kill_netns_processes(name: str) -> None:
    try:
        wanted = os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return
    if wanted == os.stat("/proc/self/ns/net").st_ino:
        return  # never the host's own namespace: that is every process of the machine
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino == wanted:
                    os.kill(int(pid), signal.SIGKILL)


def sweep(prefix: str) -> dict[str, list[str]]:
    """Remove whatever carries prefix (the safety net after a failing test); returns what was
    found, so the caller can fail the test that leaked it."""
    found = leftovers(prefix)
    for name in found.get("netns", []):
        kill_netns_processes(name)
        sh("ip", "netns", "delete", name, check=False)
    for name in found.get("links", []):
        sh("ip", "link", "delete", name, check=False)
    for table in found.get("tables", []):
        sh("nft", "delete", "table", *table.split()[1:], check=False)
    tree = daemon_tree(prefix)
    for name in found.get("cgroups", []):
        if tree is not None:
            cgroup.remove(tree, name)
    if found.get("mounts"):
        mntns.remove(directory_of(prefix))
        for point in named_mounts(prefix):
            mntns.unmount(point)
    namespace.release_memory()  # a killed daemon's tmpfs on /run/netns, when empty
    return found


# On cgroup v2 a cgroup that hands controllers to children may hold no process, and the tests'
# own cgroup holds pytest (in a login session, the shell too): each daemon gets a cgroup of its
# own, as systemd gives the unit with Delegate=yes, in which it then makes its dynos' groups. On
# v1 there is no such rule: the daemon uses the tests' own cgroups.
V2_ROOT = "/sys/fs/cgroup"


def daemon_cgroup(prefix: str) -> str | None:
    """`mkdir /sys/fs/cgroup/dynod-test-PREFIX` on a cgroup v2 host, None elsewhere."""
    if not os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers")):
        return None
    path = os.path.join(V2_ROOT, f"dynod-test-{prefix}")
    os.makedirs(path, exist_ok=True)
    return path


def daemon_tree(prefix: str) -> cgroup.Tree | None:
    """Where the daemon of that prefix makes its dynos' groups (None: nowhere)."""
    if os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers")):
        path = os.path.join(V2_ROOT, f"dynod-test-{prefix}")
        return cgroup.Tree(2, tuple((c, path) for c in cgroup.CONTROLLERS))
    try:
        return cgroup.discover()
    except cgroup.Unavailable:
        return None


def remove_daemon_cgroup(prefix: str) -> None:
    """The daemon's own v2 cgroup and its leaf, once the daemon is gone (`rmdir`)."""
    path = os.path.join(V2_ROOT, f"dynod-test-{prefix}")
    if not os.path.isdir(path) or not os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers")):
        return
    # the daemon is gone: its leaf is empty (release() is the daemon's own, it moves the caller)
    for leftover in (os.path.join(path, f"{prefix}.daemon"), path):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(leftover)


def cgroup_names(prefix: str) -> set[str]:
    """Dyno cgroups with prefix where the daemon of that prefix puts them."""
    tree = daemon_tree(prefix)
    return set() if tree is None else cgroup.names(tree, f"{prefix}-")


def netns_exec(netns: str, code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run Python code as root inside a namespace (`ip netns exec NS python3 -c CODE`)."""
    return sh("ip", "netns", "exec", netns, PYTHON, "-c", code, timeout=timeout, check=False)


# ---------------------------------------------------------------- the daemon
@dataclass
class DaemonProc:
    """One `dynod daemon` subprocess with a private everything."""

    prefix: str = field(default_factory=unique_prefix)
    cidr: str = ""
    grace: float = 3.0
    extra: list[str] = field(default_factory=list)
    router_host: str = "127.0.0.1"
    # Never the host's resolver in a test: a closed port on loopback unless a test gives its
    # own fake upstream.
    upstream: str = "127.0.0.1:9"
    # where the daemon runs (`python -m dynod` imports the dynod found there first); None: here
    cwd: str | None = None
    # the Python it runs with, and its environment (None: this one's, and this environment)
    python: str = sys.executable
    env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"dynod-{self.prefix}-", dir="/tmp"))
        self.socket = str(self.dir / "api.sock")
        self.state_dir = str(self.dir / "state")
        self.log_path = self.dir / "daemon.log"
        self.router_port = free_port()
        self.cidr = self.cidr or free_range()
        # The dynos' working directory: readable by the unprivileged user they run as.
        self.app_dir = Path(tempfile.mkdtemp(prefix=f"dynod-app-{self.prefix}-", dir="/tmp"))
        self.app_dir.chmod(0o755)
        for app in APPS_DIR.glob("*.py"):
            target = self.app_dir / app.name
            shutil.copy(app, target)
            target.chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.socket, timeout=60)

    def argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "dynod",
            "--socket",
            self.socket,
            "daemon",
            "--state-dir",
            self.state_dir,
            "--prefix",
            self.prefix,
            "--cidr",
            self.cidr,
            "--router-host",
            self.router_host,
            "--router-port",
            str(self.router_port),
            "--grace",
            str(self.grace),
            "--upstream",
            self.upstream,
            *self.extra,
        ]

    def start(self, timeout: float = 20) -> DaemonProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon keeps it
        argv = self.argv()
        own = daemon_cgroup(self.prefix)
        if own is not None:
            # a restart goes where the last daemon moved itself: its cgroup now hands its
            # controllers to children, and so may hold no process itself
            leaf = os.path.join(own, f"{self.prefix}.daemon")
            where = leaf if os.path.isdir(leaf) else own
            argv = in_cgroups([os.path.join(where, "cgroup.procs")], argv)
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(DynodError, OSError):
                self.client.call("GET", "/v1/status")
                return self
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(
        self,
        *args: str,
        cwd: str | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "DYNOD_SOCKET": self.socket, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "dynod", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or str(self.app_dir),
            env=full_env,
        )

    def _body(
        self, ptype: str, command: str, env: dict[str, str] | None, detach: bool
    ) -> dict[str, Any]:
        return {
            "type": ptype,
            "command": command,
            "cwd": str(self.app_dir),
            "env": {"PATH": SYSTEM_PATH, **(env or {})},
            "detach": detach,
        }

    def run(
        self, app: str, ptype: str, command: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A detached dyno (`dynod run --detach`), as the API answers it."""
        body = self._body(ptype, command, env, detach=True)
        return self.client.call("POST", f"/v1/apps/{app}/dynos", body)

    def run_app(
        self,
        app: str,
        ptype: str = "web",
        env: dict[str, str] | None = None,
        script: str = "echo_app.py",
    ) -> dict[str, Any]:
        """A dyno running tests/apps/`script` (echo_app.py unless told), once it is up and says
        it is listening (web: bound to PORT)."""
        dyno = self.run(app, ptype, f"{PYTHON} -u {script}", env)
        self.wait_for(lambda: self.dyno(app, dyno["name"])["state"] == "up", f"{dyno['name']} up")
        self.wait_for(lambda: "listening on" in self.output(app, dyno["name"]), "app listening")
        return self.dyno(app, dyno["name"])

    def run_once(
        self,
        app: str,
        ptype: str,
        command: str,
        timeout: float = 30,
        env: dict[str, str] | None = None,
    ) -> tuple[int | None, list[str]]:
        """A foreground dyno (`dynod run` without --detach): its output and exit status."""
        body = self._body(ptype, command, env, detach=False)
        lines: list[str] = []
        client = Client(self.socket, timeout=timeout)
        for raw in client.lines(f"/v1/apps/{app}/dynos", "POST", body):
            message = json.loads(raw)
            if "lines" in message:
                lines += message["lines"]
            elif "line" in message:  # a notice (L10)
                lines.append(message["line"])
            elif "exit" in message:
                return message["exit"], lines
        return None, lines

    def via_router(self, app: str, path: str = "/") -> tuple[int, bytes]:
        """GET `path` of `app` through the daemon's router: the status and body (an HTTP error
        status too, with its body)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.router_port}{path}", headers={"Host": f"{app}.localhost"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def dynos(self, app: str | None = None) -> list[dict[str, Any]]:
        return self.client.call("GET", "/v1/dynos" + (f"?app={app}" if app else ""))

    def dyno(self, app: str, name: str) -> dict[str, Any]:
        for d in self.dynos(app):
            if d["name"] == name:
                return d
        raise KeyError(f"{app} {name} not running")

    def stop_dyno(self, app: str, name: str | None = None, grace: float = 2) -> Any:
        path = f"/v1/apps/{app}/dynos" + (f"/{name}" if name else "") + f"?grace={grace}"
        return self.client.call("DELETE", path)

    def output(self, app: str, name: str) -> str:
        """The dyno's own output lines (app[NAME]) in the daemon's log."""
        marker = f" app[{name}]: "
        return "\n".join(
            line.split(marker, 1)[1]
            for line in self.log().splitlines()
            if marker in line and f"[{name}]" in line
        )

    def netns(self, app: str, name: str) -> str:
        return f"{self.prefix}-{app}.{name}"

    @staticmethod
    def wait_for(check: Any, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(KeyError, DynodError):
                if check():
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for: {what}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def close(self) -> dict[str, list[str]]:
        """Stop the daemon, sweep anything it left, and say what that was."""
        self.terminate()
        found = sweep(self.prefix)
        remove_daemon_cgroup(self.prefix)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.app_dir, ignore_errors=True)
        return found


@contextlib.contextmanager
def running_daemon(**kwargs: Any) -> Iterator[DaemonProc]:
    daemon = DaemonProc(**kwargs)
    try:
        yield daemon.start()
    finally:
        found = daemon.close()
        if found:
            raise AssertionError(f"the daemon left kernel objects behind: {found}")


# ---------------------------------------------------------------- a fake internet host
@dataclass
class InternetHost:
    """A namespace with a veth to the host: a stand-in for a host on the internet.

    Its TCP server on `port` answers with the address it sees the client come from, and its UDP
    server on the same port writes every datagram's source and text to `udp_log`.
    """

    prefix: str = field(default_factory=unique_prefix)

    def __post_init__(self) -> None:
        third = random.randrange(64)
        self.host_ip = f"198.51.100.{4 * third + 1}"
        self.ip = f"198.51.100.{4 * third + 2}"
        self.netns = f"{self.prefix}-inet"
        self.link = f"{self.prefix}-inet"
        self.port = 8080
        self.dir = Path(tempfile.mkdtemp(prefix=f"inet-{self.prefix}-", dir="/tmp"))
        self.udp_log = self.dir / "udp.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.dns_server: subprocess.Popen[bytes] | None = None

    def start(self, routes: list[str]) -> InternetHost:
        sh("ip", "netns", "add", self.netns)
        sh(
            "ip",
            "link",
            "add",
            self.link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.netns,
        )
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.link)
        sh("ip", "link", "set", self.link, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/30", "dev", "eth0")
        for cidr in routes:  # so the tests can try to reach dynos from "the internet"
            sh("ip", "-n", self.netns, "route", "add", cidr, "via", self.host_ip)
        code = f"""
import socket, threading
def tcp():
    s = socket.create_server(("0.0.0.0", {self.port}))
    while True:
        c, peer = s.accept()
        c.sendall(peer[0].encode()); c.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", {self.port}))
    while True:
        data, peer = s.recvfrom(2048)
        with open({str(self.udp_log)!r}, "a") as f:
            f.write(peer[0] + " " + data.decode(errors="replace") + "\\n")
threading.Thread(target=udp, daemon=True).start()
tcp()
"""
        self.server = subprocess.Popen(["ip", "netns", "exec", self.netns, PYTHON, "-c", code])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = netns_exec(
                self.netns, f"import socket; socket.create_connection(('127.0.0.1', {self.port}))"
            )
            if probe.returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError("fake internet host did not start")

    def udp_seen(self) -> str:
        return self.udp_log.read_text() if self.udp_log.exists() else ""

    def serve_dns(self, answers: dict[str, str]) -> None:
        """A fake upstream resolver on port 53 (UDP and TCP) of this host: A records for the
        names given, NXDOMAIN for the rest."""
        code = f"""
import time
from dnslib import QTYPE, RR, A, RCODE
from dnslib.server import DNSServer, BaseResolver
ANSWERS = {answers!r}
class Resolver(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name in ANSWERS and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ANSWERS[name]), ttl=60))
        elif name not in ANSWERS:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply
for tcp in (False, True):
    DNSServer(Resolver(), port=53, address="0.0.0.0", tcp=tcp).start_thread()
while True:
    time.sleep(60)
"""
        # The venv's python: the fake resolver uses dnslib (test code, run as root).
        self.dns_server = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", code]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = netns_exec(
                self.netns, "import socket; socket.create_connection(('127.0.0.1', 53))"
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("fake upstream resolver did not start")

    def close(self) -> None:
        for server in (self.server, self.dns_server):
            if server is not None:
                server.kill()
                server.wait(10)
        sweep(self.prefix)
        shutil.rmtree(self.dir, ignore_errors=True)
