"""docs/tutorial.md as a program: its marked blocks, and a throwaway machine to run them on.

A block after `<!-- run -->` is a shell script; a block after `<!-- expect -->` is what the script
before it must print. A block after `<!-- daemon -->` is the one command that starts dynod's
daemon (on the learner's VM it runs already, as a service): the runner starts it in the machine,
with options of its own added, in the background, and stops it before the machine is closed.
The machine is a set of fresh namespaces (network, mount, pid) that plays the learner's VM: `/run`
is a tmpfs and `/etc` an overlay there, so `ip netns add`, pid files, dynod's socket and state and
`/etc/netns/...` never reach the host, and killing its first process ends everything in it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN = "<!-- run -->"
EXPECT = "<!-- expect -->"
DAEMON = "<!-- daemon -->"
FENCE = re.compile(r"^```")


@dataclass
class Step:
    script: str
    line: int  # of the script's first line in the file, for messages
    expected: list[str] | None = None
    daemon: bool = False  # the script starts dynod's daemon, which runs on in the background


@dataclass
class Tutorial:
    steps: list[Step] = field(default_factory=list)


def _block(lines: list[str], start: int) -> tuple[str, int]:
    """The fenced block starting at or after `start`: its text, and the index after it."""
    i = start
    while not FENCE.match(lines[i]):
        if lines[i].strip():
            raise ValueError(f"line {i + 1}: a marker must be followed by a fenced block")
        i += 1
    end = i + 1
    while not FENCE.match(lines[end]):
        end += 1
    return "\n".join(lines[i + 1 : end]), end + 1


def parse(text: str) -> Tutorial:
    lines = text.splitlines()
    tutorial = Tutorial()
    i = 0
    while i < len(lines):
        marker = lines[i].strip()
        if marker in (RUN, DAEMON):
            script, after = _block(lines, i + 1)
            if marker == DAEMON and not re.fullmatch(r"dynod daemon( [^\n;&|]*)?", script.strip()):
                raise ValueError(f"line {i + 1}: a daemon block is one `dynod daemon` command")
            tutorial.steps.append(Step(script, i + 3, daemon=marker == DAEMON))
            i = after
        elif marker == EXPECT:
            if (
                not tutorial.steps
                or tutorial.steps[-1].expected is not None
                or tutorial.steps[-1].daemon
            ):
                raise ValueError(f"line {i + 1}: an expect block needs a run block before it")
            body, i = _block(lines, i + 1)
            tutorial.steps[-1].expected = [line for line in body.splitlines() if line.strip()]
        else:
            i += 1
    return tutorial


def _pattern(expected: str) -> re.Pattern[str]:
    """One expected line: `...` is any text; trailing blanks do not matter."""
    parts = [re.escape(part) for part in expected.rstrip().split("...")]
    return re.compile("^" + ".*".join(parts) + r"\s*$")


def mismatch(expected: list[str], output: str) -> str | None:
    """Why `output` does not show the expected lines in order (other lines may come between);
    an empty expectation means the block must print nothing."""
    got = [line for line in output.splitlines() if line.strip()]
    if not expected:
        return None if not got else f"expected no output, got {got[0]!r}"
    i = 0
    for line in got:
        if i < len(expected) and _pattern(expected[i]).match(line):
            i += 1
    if i == len(expected):
        return None
    return f"no line matched {expected[i]!r}"


class Machine:
    """A throwaway stand-in for the learner's VM: new network, mount and pid namespaces.

    Its /proc is its own (so pids, /proc/1/ns/net and cgroup.procs mean the machine's), so is
    its /sys (a sysfs mounted from its network namespace: /sys/class/net lists its links, not
    the host's) with the host's cgroup trees moved onto it, and it has an uplink `eth0` with an
    address and a default route, as a VM has (a bridge without ports: nothing leaves through
    it), so dynod finds a NAT address for its Private Spaces."""

    SETUP = (
        "set -e; mount --make-rprivate /; mount -t proc proc /proc; mount -t tmpfs tmpfs /run; "
        "mkdir /run/cgroup; mount --rbind /sys/fs/cgroup /run/cgroup; mount -t sysfs sysfs /sys; "
        "mount --move /run/cgroup /sys/fs/cgroup; rmdir /run/cgroup; "
        "mkdir /run/etc-upper /run/etc-work; "
        "mount -t overlay overlay -o lowerdir=/etc,upperdir=/run/etc-upper,workdir=/run/etc-work "
        "/etc; ip link set lo up; "
        "ip link add eth0 type bridge; ip addr add 198.51.100.10/24 dev eth0; ip link set eth0 up; "
        "ip route add default via 198.51.100.1 dev eth0 onlink; "
        "echo ready; exec sleep infinity"
    )

    def __init__(self) -> None:
        self.daemon: subprocess.Popen[bytes] | None = None
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c", self.SETUP],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("could not make the tutorial's namespaces")
        self.init = self._child(self.holder.pid)

    @staticmethod
    def _child(pid: int) -> int:
        """The first process of the new pid namespace: unshare's only child."""
        for _ in range(100):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise RuntimeError("unshare started no child")

    def _enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-n", "-m", "-p", "--"]

    def run(self, script: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
        """`script` under bash -e inside the machine, from `/`; its exit status and output."""
        done = subprocess.run(
            [*self._enter(), "bash", "-e", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
        )
        return done.returncode, done.stdout + done.stderr

    def start_daemon(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        """`dynod daemon` in the background inside the machine, once its API answers."""
        with open(log, "ab") as out:
            self.daemon = subprocess.Popen(
                [*self._enter(), *argv], stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited {self.daemon.returncode}:\n{log.read_text()}"
                )
            if self.run("dynod status >/dev/null 2>&1", env)[0] == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the daemon did not answer within 60 s:\n{log.read_text()}")

    def stop_daemon(self, timeout: float = 60) -> int | None:
        """Ctrl-C to the daemon (nsenter's child: nsenter does not pass signals on), which stops
        its dynos and removes what it made, cgroups included; its exit status."""
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return None
        with contextlib.suppress(RuntimeError, OSError):
            os.kill(self._child(daemon.pid), signal.SIGINT)
        try:
            return daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()  # close() then kills the daemon itself, with everything in the machine
            daemon.wait(10)
            return None

    def close(self) -> None:
        """SIGKILL to the pid namespace's first process kills every process in it; the mount
        namespace and with it the namespaces `ip netns add` pinned then go away."""
        with contextlib.suppress(RuntimeError, OSError):
            self.stop_daemon()
        with contextlib.suppress(AttributeError, ProcessLookupError):
            os.kill(self.init, signal.SIGKILL)
        self.holder.kill()
        self.holder.wait(10)
