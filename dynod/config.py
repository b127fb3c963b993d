"""The daemon's settings (`dynod daemon --help` lists them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dynod.kernel.addressing import COMMON_RUNTIME_RANGE, SHARD_PORTS

DEFAULT_SOCKET = "/run/dynod.sock"
DEFAULT_STATE_DIR = "/var/lib/dynod"


def socket_path() -> str:
    """Where the CLI finds the daemon: $DYNOD_SOCKET, else /run/dynod.sock."""
    return os.environ.get("DYNOD_SOCKET", DEFAULT_SOCKET)


@dataclass
class Config:
    state_dir: str = DEFAULT_STATE_DIR
    socket: str = DEFAULT_SOCKET
    prefix: str = "dynod"
    cidr: str = str(COMMON_RUNTIME_RANGE)
    router_host: str = "0.0.0.0"
    router_port: int = 5000
    # router worker processes (dynod/router/workers.py); 0: the router runs in the daemon's loop
    router_workers: int = 0
    grace: float = 30.0  # SIGTERM to SIGKILL, as on Heroku
    boot_timeout: float = 60.0  # a web dyno must bind PORT within this (R10)
    dyno_user: str = "nobody"  # who dynos run as when root calls `dynod run` without sudo
    socket_group: str = "dynod"  # members may use the CLI, if the group exists
    echo_logs: bool = True  # print the log to stderr too
    restart_crashed: bool = True
    # where names outside .localspace are forwarded ("IP" or "IP:PORT"); empty: the host's
    # /etc/resolv.conf nameservers
    upstreams: list[str] = field(default_factory=list)
    # seconds between samples of each dyno's memory (R14/R15), as Heroku's log-runtime-metrics
    metrics_interval: float = 20.0
    dns_timeout: float = 2.0  # an upstream that has not answered by then: SERVFAIL
    health_interval: float = 1.0  # seconds between checks that each dyno's network is whole
    # re-apply the firewall when someone else changes it; off only to break it by hand and
    # watch `dynod inspect` flag the difference
    firewall_guard: bool = True
    shard_ports: int = SHARD_PORTS  # dynos per bridge: a network is sharded over bridges

    @property
    def resolv_dir(self) -> str:
        """Where each network's resolv.conf is written (bound over a dyno's /etc/resolv.conf)."""
        return os.path.join(self.state_dir, "resolv")

    @property
    def hosts_dir(self) -> str:
        """Each running dyno's /etc/hosts (its hostname) and the fstab file that binds it in."""
        return os.path.join(self.state_dir, "hosts")
