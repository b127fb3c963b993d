"""`GET /v1/status` (`dynod status`): the daemon's settings and what it runs on."""

from __future__ import annotations

import os
from typing import Any

from dynod.config import Config
from dynod.dns.server import DnsServer
from dynod.kernel.host import Kernel
from dynod.router.workers import AnyRouter, RouterWorkers
from dynod.rules import sizes


class StatusReport:
    def __init__(
        self,
        config: Config,
        kernel: Kernel,
        dns: DnsServer,
        router: AnyRouter,
        upstreams: list[tuple[str, int]],
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.dns = dns
        self.router = router
        self.upstreams = upstreams

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "socket": self.config.socket,
            "router": f"{self.config.router_host}:{self.router.port}",
            "range": str(self.kernel.pool.network),
            "bridge": self.kernel.names.bridge,
            "dns": self.kernel.common.address,
            "upstreams": [f"{h}:{p}" for h, p in self.upstreams],
            "spaces": len(self.kernel.spaces),
            "dns_stats": self.dns.stats,
            "prefix": self.config.prefix,
            "state_dir": self.config.state_dir,
            "sizes": self._sizes(),
            "workers": self._workers(),
        }

    def _workers(self) -> str:
        """The router's worker processes and who they run as (`ps` shows the uid bare)."""
        if not isinstance(self.router, RouterWorkers):
            return "none: the router runs in the daemon's own loop"
        running, count = self.router.running(), self.router.count
        alive = f"{count}" if running == count else f"{running} of {count} (see `dynod logs`)"
        if self.router.user is None:
            return f"{alive} router processes, as the daemon's user"
        return f"{alive} router processes, as uid {self.router.user} (no capability)"

    def _sizes(self) -> str:
        """How dyno sizes are enforced here (cgroup v1 or v2), or why they are not."""
        tree = self.kernel.cgroups.tree
        if tree is None:
            return f"not enforced: {self.kernel.cgroups.problem}"
        return f"cgroup v{tree.version} below {tree.base('memory')}, default {sizes.DEFAULT}"
