"""How many requests per second dynod's router proxies, next to nginx, in one run.

    sudo .venv/bin/python bench/router_throughput.py [--seconds 5] [--rounds 3] [--json]
        [--router-workers N]     # the daemon's option (default one per core; 0: in its loop)

Two reverse proxies, each in front of the same kind of backend (one nginx worker answering
`return 200 "ok"` to everything), loaded by the same client, in alternating rounds:

* **nginx**: the reference. Debian's nginx 1.22 with a configuration of its own (temporary prefix,
  never the system service), `worker_processes auto` (one per core), listening on 127.0.0.A,
  proxying to the backend on 127.0.0.B through an `upstream` with `keepalive 64`,
  `proxy_http_version 1.1` and `proxy_set_header Connection ""` (what nginx's documentation gives
  for upstream keep-alive).
* **dynod**: a `dynod daemon` of its own (temporary state directory and socket, random prefix
  `brtXXX`, a free /22 of 172.31.0.0/16, router on 127.0.0.1), with one web dyno of the app
  `bench` running the backend nginx on its `$PORT`. The router is reached as
  `Host: bench.localhost`.

The client is `wrk -t2 -c32` (Debian's package) for --seconds per side and round, after an
uncounted 1 s warm-up. Per run: requests/s, p50 and p99 latency (wrk's `--latency`), non-2xx
answers and socket errors. During each dynod run, a thread asks the daemon's API `GET /v1/status`
over its Unix socket every 100 ms and records how long each answer took: the router's load must
not make the API slow (target: p99 under 50 ms). The backend alone (wrk straight at the host's
backend) is measured once, as the ceiling of both.

Targets (PASS/MISS, never asserted; exit status 0 whenever the bench ran): dynod's requests/s at
least 0.5x nginx's (medians over rounds), API p99 under 50 ms.

It needs root (the daemon). It installs nothing: `apt-get install wrk nginx` first. Everything
it starts (daemon, nginx processes, wrk) is stopped on the way out, on an error, Ctrl-C or
SIGTERM too: the daemon removes its dyno, bridge and nftables tables itself on SIGTERM, the
temporary directory goes, and the bench checks that nothing named with its prefix is left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from dyno_lifecycle import anything, block_prefixlen, free_port, leftovers, pick_ranges, sweep
from run_support import Interrupted, machine, signals_ignored, sigterm_as_interrupt

from dynod.api.client import Client
from dynod.errors import DynodError

APP = "bench"
THREADS, CONNECTIONS = 2, 32
RATIO_TARGET = 0.5
API_TARGET_MS = 50.0
START_TIMEOUT = 30.0
KILL_AFTER = 30.0
API_EVERY = 0.1  # seconds between two API calls under load

BACKEND_CONF = """\
worker_processes 1;
pid {run}/backend-{tag}.pid;
error_log stderr error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {run}/body-{tag};
    proxy_temp_path {run}/proxy-{tag};
    fastcgi_temp_path {run}/fcgi-{tag};
    uwsgi_temp_path {run}/uwsgi-{tag};
    scgi_temp_path {run}/scgi-{tag};
    keepalive_requests 100000;
    server {{ listen {listen}; location / {{ return 200 "ok\\n"; }} }}
}}
"""

PROXY_CONF = """\
worker_processes auto;
pid {run}/proxy.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {run}/pbody;
    proxy_temp_path {run}/pproxy;
    fastcgi_temp_path {run}/pfcgi;
    uwsgi_temp_path {run}/puwsgi;
    scgi_temp_path {run}/pscgi;
    keepalive_requests 100000;
    upstream backend {{ server {backend}; keepalive 64; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------- processes
class Process:
    """One process the bench started, in a session of its own, stopped by its pid only."""

    def __init__(self, name: str, argv: list[str], log_path: str) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        try:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(KILL_AFTER)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return self.process.returncode
        finally:
            self._log.close()


def wait_http(url_host: str, port: int, host_header: str, what: Process) -> None:
    """Until the server answers 200 (curl-free: a raw request over a socket)."""
    import socket

    deadline = time.monotonic() + START_TIMEOUT
    request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if not what.alive():
            raise RuntimeError(f"{what.name} exited at start:\n{what.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((url_host, port), 1) as s:
            s.settimeout(2)
            s.sendall(request)
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what.name} did not answer 200 within {START_TIMEOUT:g} s:\n{what.tail()}")


def nginx(name: str, conf: str, workdir: str) -> Process:
    path = os.path.join(workdir, f"{name}.conf")
    with open(path, "w") as f:
        f.write(conf)
    argv = ["nginx", "-p", workdir, "-e", "stderr", "-c", path, "-g", "daemon off;"]
    return Process(name, argv, os.path.join(workdir, f"{name}.log"))


def dynod_command() -> list[str]:
    return [sys.executable, "-c", "from dynod.cli.main import main; main()"]


class Daemon(Process):
    def __init__(
        self, prefix: str, network: str, workdir: str, port: int, workers: int | None
    ) -> None:
        self.socket = os.path.join(workdir, "api.sock")
        self.port = port
        argv = [
            *dynod_command(), "--socket", self.socket, "daemon",
            "--state-dir", os.path.join(workdir, "state"), "--prefix", prefix,
            "--cidr", network, "--router-host", "127.0.0.1", "--router-port", str(port),
            "--grace", "2", "--quiet",
        ]  # fmt: skip
        if workers is not None:
            argv += ["--router-workers", str(workers)]
        super().__init__("dynod daemon", argv, os.path.join(workdir, "daemon.log"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not self.alive():
                raise RuntimeError(f"dynod daemon exited at start:\n{self.tail()}")
            with contextlib.suppress(DynodError, OSError):
                Client(self.socket, timeout=2).call("GET", "/v1/status")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dynod daemon did not answer:\n{self.tail()}")
            time.sleep(0.05)

    def start_backend(self, rundir: str) -> None:
        """The web dyno: the backend nginx on $PORT (its config written by the dyno's shell)."""
        template = BACKEND_CONF.format(run=rundir, tag="dyno", listen="PORTX")
        with open(os.path.join(rundir, "dyno.conf.in"), "w") as f:
            f.write(template)
        command = (
            f"sed s/PORTX/$PORT/ {rundir}/dyno.conf.in > {rundir}/dyno.conf && "
            f"exec {shutil.which('nginx')} -p {rundir} -e stderr -c {rundir}/dyno.conf "
            "-g 'daemon off;'"
        )
        Client(self.socket, timeout=60).call(
            "POST",
            f"/v1/apps/{APP}/dynos",
            {"type": "web", "command": command, "cwd": rundir, "env": {}, "detach": True},
        )
        try:
            wait_http("127.0.0.1", self.port, f"{APP}.localhost", self)
        except RuntimeError as exc:
            logs = Client(self.socket, timeout=10)._open("GET", f"/v1/logs?app={APP}&tail=400")
            lines = logs.read().decode(errors="replace").splitlines()
            dyno = "\n".join(line for line in lines if "heroku[router]" not in line)
            raise RuntimeError(f"{exc}\n{dyno}") from exc


# ---------------------------------------------------------------------------- measuring
@dataclass
class Run:
    side: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    api_ms: list[float] = field(default_factory=list)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str, side: str) -> Run:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m is None:
            raise RuntimeError(f"no {pct}% latency in wrk's output:\n{text}")
        return float(m.group(1)) * _UNITS[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{text}")
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return Run(
        side,
        float(rps.group(1)),
        latency("50"),
        latency("99"),
        int(non.group(1)) if non else 0,
        sum(int(g) for g in errs.groups()) if errs else 0,
    )


class ApiProbe(threading.Thread):
    """`GET /v1/status` every API_EVERY s until stopped; the time each answer took, in ms."""

    def __init__(self, socket_path: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(socket_path, timeout=10)
        self.times: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            began = time.perf_counter()
            with contextlib.suppress(DynodError, OSError):
                self.client.call("GET", "/v1/status")
                self.times.append(1000 * (time.perf_counter() - began))
            self.done.wait(API_EVERY)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(runs: list[Run], direct: Run) -> dict[str, Any]:
    def med(side: str, key: str) -> float:
        return statistics.median(getattr(r, key) for r in runs if r.side == side)

    api = [t for r in runs for t in r.api_ms]
    ratio = med("dynod", "rps") / med("nginx", "rps")
    return {
        "backend_direct_rps": direct.rps,
        "nginx": {k: med("nginx", k) for k in ("rps", "p50_ms", "p99_ms")},
        "dynod": {k: med("dynod", k) for k in ("rps", "p50_ms", "p99_ms")},
        "ratio": ratio,
        "ratio_rounds": [
            d.rps / n.rps
            for n, d in zip(
                [r for r in runs if r.side == "nginx"],
                [r for r in runs if r.side == "dynod"],
                strict=True,
            )
        ],
        "api_ms": {"p50": pct(api, 0.5), "p99": pct(api, 0.99), "max": max(api, default=0)},
        "errors": sum(r.errors + r.non_2xx for r in runs),
        "ratio_pass": ratio >= RATIO_TARGET,
        "api_pass": pct(api, 0.99) < API_TARGET_MS,
    }


def table(s: dict[str, Any], runs: list[Run]) -> str:
    lines = [
        f"machine: {machine()}",
        "",
        "| side | requests/s | p50 | p99 | API p99 |",
        "|---|---|---|---|---|",
    ]  # noqa: E501
    for r in runs:
        api = f"{pct(r.api_ms, 0.99):.1f} ms" if r.api_ms else ""
        lines.append(f"| {r.side} | {r.rps:.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {api} |")
    n, d = s["nginx"], s["dynod"]
    lines += [
        "",
        f"backend directly: {s['backend_direct_rps']:.0f} requests/s",
        f"medians: nginx {n['rps']:.0f}/s (p50 {n['p50_ms']:.2f} ms, p99 {n['p99_ms']:.2f} ms), "
        f"dynod {d['rps']:.0f}/s (p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms)",
        f"ratio dynod/nginx: {s['ratio']:.2f}x (rounds "
        + ", ".join(f"{x:.2f}" for x in s["ratio_rounds"])
        + f") target {RATIO_TARGET}x: {'PASS' if s['ratio_pass'] else 'MISS'}",
        f"daemon API under router load: p50 {s['api_ms']['p50']:.1f} ms, p99 "
        f"{s['api_ms']['p99']:.1f} ms, max {s['api_ms']['max']:.1f} ms; target p99 < "
        f"{API_TARGET_MS:g} ms: {'PASS' if s['api_pass'] else 'MISS'}",
        f"non-2xx answers and socket errors, all runs: {s['errors']}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Run], list[str]]:
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: apt-get install wrk nginx")
    prefix = f"brt{random.randrange(16**3):03x}"
    network, _ = pick_ranges(block_prefixlen(4))
    workdir = tempfile.mkdtemp(prefix="router-bench-")
    os.chmod(workdir, 0o755)
    rundir = os.path.join(workdir, "run")  # the dyno runs as nobody: its nginx writes here
    os.mkdir(rundir)
    os.chmod(rundir, 0o777)
    a, b = sorted(random.sample(range(2, 250), 2))
    backend_addr, proxy_addr = f"127.0.0.{a}", f"127.0.0.{b}"
    proxy_port = backend_port = free_port()
    started: list[Process] = []
    warnings: list[str] = []
    daemon: Daemon | None = None
    try:
        say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
        backend = nginx(
            "backend",
            BACKEND_CONF.format(run=workdir, tag="host", listen=f"{backend_addr}:{backend_port}"),
            workdir,
        )
        started.append(backend)
        wait_http(backend_addr, backend_port, "x", backend)
        proxy = nginx(
            "proxy",
            PROXY_CONF.format(
                run=workdir,
                backend=f"{backend_addr}:{backend_port}",
                listen=f"{proxy_addr}:{proxy_port}",
            ),
            workdir,
        )
        started.append(proxy)
        wait_http(proxy_addr, proxy_port, "x", proxy)
        say(f"starting dynod daemon (prefix {prefix}, {network})")
        daemon = Daemon(prefix, str(network), workdir, free_port(), args.router_workers)
        daemon.start_backend(rundir)
        say("backend directly ...")
        direct = wrk_at(backend_addr, backend_port, "x", args.seconds, "backend")
        runs: list[Run] = []
        for i in range(args.rounds):
            order = ["nginx", "dynod"] if i % 2 == 0 else ["dynod", "nginx"]
            for side in order:
                say(f"round {i + 1}/{args.rounds}: {side}")
                if side == "nginx":
                    runs.append(measure_at(proxy_addr, proxy_port, "x", args.seconds, None, side))
                else:
                    runs.append(
                        measure_at(
                            "127.0.0.1",
                            daemon.port,
                            f"{APP}.localhost",
                            args.seconds,
                            daemon.socket,
                            side,
                        )  # fmt: skip
                    )
        runs.sort(key=lambda r: r.side != "nginx")
        return summarize(runs, direct), runs, warnings
    finally:
        with signals_ignored():
            for p in reversed(started):
                p.stop(signal.SIGQUIT)  # nginx: graceful stop
            if daemon is not None:
                status = daemon.stop()
                if status not in (0, -signal.SIGTERM):
                    warnings.append(f"daemon exited {status}:\n{daemon.tail()}")
            found = leftovers(prefix)
            if anything(found):
                warnings.append(f"left behind, swept: {found}")
                sweep(prefix)
            shutil.rmtree(workdir, ignore_errors=True)


def wrk_at(addr: str, port: int, host: str, seconds: float, side: str) -> Run:
    return wrk_url(f"http://{addr}:{port}/", host, seconds, side)


def wrk_url(url: str, host: str, seconds: float, side: str) -> Run:
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency"]
    argv += ["-H", f"Host: {host}", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, side)


def measure_at(addr: str, port: int, host: str, seconds: float, api: str | None, side: str) -> Run:
    url = f"http://{addr}:{port}/"
    wrk_url(url, host, 1, side)  # warm-up: pools filled, code paths hot
    probe = ApiProbe(api) if api else None
    if probe:
        probe.start()
    try:
        result = wrk_url(url, host, seconds, side)
    finally:
        if probe:
            probe.done.set()
            probe.join()
    result.api_ms = probe.times if probe else []
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--router-workers",
        type=int,
        default=None,
        help="the daemon's --router-workers (default: its own, one per core; 0: in its loop)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 10:
        parser.error("--seconds must be 1-60 and --rounds 1-10 (the bench is bounded)")
    if os.geteuid() != 0:
        print("error: the bench starts a dynod daemon: run it as root", file=sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            summary, runs, warnings = run(args)
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; everything the bench started was stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=2))
    else:
        print(table(summary, runs))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
