"""The dynos' mount namespaces are copies of the daemon's template (kernel/mounts.py), the host's
mounts without /run/netns's: however many network namespaces the host has, a dyno's mount table
holds none of them, and still holds the host's files, its directory, its private /tmp and its
resolv.conf. The template is made at start (again after a SIGKILL), when someone breaks it, and
for a directory on a filesystem mounted since; it goes at a clean stop."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynod.kernel.mounts import directory_of
from tests.support import (
    PYTHON,
    DaemonProc,
    running_daemon,
    sh,
    template_mounts,
    unique_prefix,
)

pytestmark = pytest.mark.root

# What a dyno prints about its mount namespace: every mount point with its type, then what it
# finds in its directory, /tmp and /etc/resolv.conf.
LOOK = """
import os
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    kind = fields[fields.index('-') + 1]
    print('mount', fields[4], kind)
    if fields[4] == '/run/netns':
        print('netns-options', fields[5])
print('cwd', os.getcwd(), sorted(os.listdir('.')))
print('tmp', os.listdir('/tmp'))
print('resolv', open('/etc/resolv.conf').read().replace(chr(10), ' '))
print('os-release', os.path.exists('/etc/os-release'))
print('netns', sorted(os.listdir('/run/netns')))
"""


@contextlib.contextmanager
def host_namespaces(count: int) -> Iterator[list[str]]:
    """`ip netns add` of count throwaway namespaces (a prefix of their own), deleted after."""
    prefix = unique_prefix()
    names = [f"{prefix}-{n}" for n in range(count)]
    made: list[str] = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
        yield made
    finally:
        for name in made:
            sh("ip", "netns", "delete", name, check=False)


def look(d: DaemonProc, app: str, cwd: str | None = None) -> dict[str, list[str]]:
    """A one-off dyno runs LOOK (attached, through the CLI, in cwd): its lines by first word."""
    script = Path(cwd or str(d.app_dir)) / "look.py"
    script.write_text(LOOK)
    script.chmod(0o644)
    result = d.cli("run", "--app", app, "--no-tty", "--", f"{PYTHON} look.py", cwd=cwd)
    assert result.returncode == 0, (result.stdout, result.stderr, d.log()[-3000:])
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        found.setdefault(word, []).append(rest)
    return found


def no_host_namespaces(seen: dict[str, list[str]], names: list[str]) -> None:
    mounts = seen["mount"]
    assert not [m for m in mounts if m.endswith(" nsfs")], mounts
    assert not [m for m in mounts if m.startswith("/run/netns/")], mounts
    assert [m for m in mounts if m.startswith("/run/netns ")] == ["/run/netns tmpfs"], mounts
    assert not [m for m in mounts if any(n in m for n in names)]


def sleeping(netns: str) -> list[str]:
    """The dyno's `sleep` processes (`ip netns pids NS`, by their comm). A process of the
    dyno's starting chain (its `mount`, a shell) may have exited since it was listed."""
    found = []
    for pid in sh("ip", "netns", "pids", netns).stdout.split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                found.append(pid)
    return found


def template_identity(prefix: str) -> tuple[int, int]:
    found = os.stat(os.path.join(directory_of(prefix), "mnt"))
    return found.st_dev, found.st_ino


def test_a_dyno_copies_the_template_without_the_hosts_network_namespaces() -> None:
    with host_namespaces(50) as before, running_daemon() as d:
        first = look(d, "mounts")
        no_host_namespaces(first, before)
        # the host's files, its directory, a private empty /tmp, the network's resolv.conf
        assert first["os-release"] == ["True"]
        assert first["cwd"][0].startswith(f"{d.app_dir} ") and "'look.py'" in first["cwd"][0]
        # (its directory is under /tmp: only it is bound back in)
        assert first["tmp"] == [str([d.app_dir.name])], first["tmp"]
        assert "/tmp tmpfs" in first["mount"]
        assert first["resolv"][0].startswith("# dynod: DNS on the "), first["resolv"]
        # /run/netns: the template's empty read-only cover, not one of the dyno's own
        assert first["netns"] == ["[]"] and first["netns-options"][0].startswith("ro,")
        with host_namespaces(20) as later:
            second = look(d, "mounts")
            no_host_namespaces(second, before + later)
            # the same copy: as many mounts with 70 namespaces more on the host as with 50
            assert len(second["mount"]) == len(first["mount"])
        # a detached dyno and a formation-less process dyno: the same sandbox
        dyno = d.run("mounts", "worker", "sleep 600")
        netns = d.netns("mounts", dyno["name"])
        d.wait_for(lambda: sleeping(netns), "the dyno's sleep")
        with open(f"/proc/{sleeping(netns)[0]}/mountinfo") as f:
            table = f.read()
        assert " nsfs " not in table and " /run/netns/" not in table
        assert d.stop_dyno("mounts", dyno["name"])["stopped"] == [dyno["name"]]


def test_a_formation_dyno_copies_the_template_too() -> None:
    with host_namespaces(10) as before, running_daemon() as d:
        (d.app_dir / "Procfile").write_text("worker: sleep 600\n")
        created = d.cli("apps:create", "formed", "--dir", str(d.app_dir), cwd="/")
        assert created.returncode == 0, created.stderr
        scaled = d.cli("ps:scale", "--app", "formed", "worker=1", cwd="/")
        assert scaled.returncode == 0, scaled.stderr
        netns = d.netns("formed", "worker.1")
        d.wait_for(lambda: sleeping(netns), "the formation's sleep")
        with open(f"/proc/{sleeping(netns)[0]}/mountinfo") as f:
            table = f.read()
        assert " nsfs " not in table and " /run/netns/" not in table
        assert not [n for n in before if n in table]
        assert d.cli("ps:scale", "--app", "formed", "worker=0", cwd="/").returncode == 0


def test_the_template_goes_at_a_stop_and_is_made_again_after_a_sigkill() -> None:
    d = DaemonProc()
    template = os.path.join(directory_of(d.prefix), "mnt")
    try:
        d.start()
        assert template_mounts(d.prefix) == sorted([directory_of(d.prefix), template]) + [
            directory_of(d.prefix)
        ]
        killed = template_identity(d.prefix)
        d.kill9()
        assert template_identity(d.prefix) == killed  # left behind, stale
        # held open: the stale namespace lives on, so its number is not given to the new one
        old = os.open(template, os.O_RDONLY)
        try:
            d.start()
            assert template_identity(d.prefix) != killed
        finally:
            os.close(old)
        # made again in its place: one mount of the directory, one of the file, a new namespace
        assert template_mounts(d.prefix) == sorted([directory_of(d.prefix), template]) + [
            directory_of(d.prefix)
        ]
        no_host_namespaces(look(d, "again"), [])
        assert d.terminate() == 0
        assert template_mounts(d.prefix) == []
        assert not os.path.exists(directory_of(d.prefix))
    finally:
        assert d.close() == {}


def test_a_template_someone_unmounted_is_made_again_at_the_next_start() -> None:
    with running_daemon() as d:
        template = os.path.join(directory_of(d.prefix), "mnt")
        sh("umount", "-l", template)
        no_host_namespaces(look(d, "broken"), [])
        assert f"the dynos' mount template {template} was unmounted" in d.log()
        assert template in template_mounts(d.prefix)


def test_a_directory_on_a_filesystem_mounted_after_the_template_is_seen() -> None:
    """On a host whose mounts are private (no propagation to the template), a dyno's directory
    on a filesystem mounted after the daemon started is still its directory: the template is
    made again for it."""
    with running_daemon() as d:
        where = tempfile.mkdtemp(prefix=f"dynod-{d.prefix}-later-", dir="/tmp")
        try:
            sh("mount", "-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", where)
            try:
                marker = Path(where, "only-on-the-new-filesystem")
                marker.write_text("")
                marker.chmod(0o644)
                seen = look(d, "later", cwd=where)
                assert "'only-on-the-new-filesystem'" in seen["cwd"][0], seen["cwd"]
                no_host_namespaces(seen, [])
                assert "had no mount of device" in d.log()
                template = os.path.join(directory_of(d.prefix), "mnt")
                assert template_mounts(d.prefix).count(template) == 1  # the old one went
            finally:
                sh("umount", "-l", where)
        finally:
            os.rmdir(where)


def test_without_a_template_a_dyno_copies_the_hosts_mounts_and_the_log_says_why() -> None:
    with running_daemon() as d:
        directory = directory_of(d.prefix)
        sh("umount", "-l", os.path.join(directory, "mnt"))
        sh("umount", "-l", directory)
        sh("rm", "-r", directory)
        Path(directory).write_text("someone else's file\n")  # the template cannot be made there
        try:
            seen = look(d, "fallback")
            # the host's copy: the one-off's own namespace's name is a mount in it, covered
            assert [m for m in seen["mount"] if m.endswith(" nsfs")], seen["mount"]
            assert seen["tmp"] == [str([d.app_dir.name])], seen["tmp"]
            assert "could not be made again" in d.log()
            assert "dynos copy the host's mounts" in d.log()
            assert Path(directory).read_text() == "someone else's file\n"
        finally:
            os.unlink(directory)


def test_the_template_is_in_the_start_up_commands_and_a_dyno_enters_it() -> None:
    with running_daemon() as d:
        startup = d.cli("explain", "daemon")
        assert startup.returncode == 0, startup.stderr
        directory = directory_of(d.prefix)
        for line in (
            f"mount --bind {directory} {directory}",
            f"mount --make-private {directory}",
            f"unshare --mount={directory}/mnt --propagation slave sh -c",
            "drop /run/netns",
        ):
            assert line in startup.stdout, startup.stdout
        run = d.cli("run", "--app", "told", "--type", "job", "--explain", "--", "true")
        assert run.returncode == 0, run.stderr
        # the thread that starts it enters the template, and its own copy is made of it: the
        # chain is born there, and joins its cgroups first (a one-off is sized)
        chain = run.stderr[run.stderr.index(f"nsenter --mount={directory}/mnt -- ") :]
        assert chain.startswith(f"nsenter --mount={directory}/mnt -- unshare --pid --fork --mount")
        isolate = chain[chain.index(" isolate ") :]
        assert re.search(r"/(cgroup\.procs|tasks) -- setpriv", isolate), isolate


def test_a_stopped_daemon_leaves_no_template_even_with_dynos_running_at_stop() -> None:
    d = DaemonProc()
    try:
        d.start()
        d.run("busy", "worker", "sleep 600")
        assert d.terminate() == 0
        assert template_mounts(d.prefix) == []
        out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True)
        assert directory_of(d.prefix) not in out.stdout
    finally:
        assert d.close() == {}


# Where the host's mounts are shared (systemd's), run in a mount namespace of its own (nothing
# of it reaches the host): a shared tmpfs stands for /run, its `netns` directory bound onto
# itself and made shared as `ip netns add` makes /run/netns (so it joins the tmpfs's peer
# group), a template dropping it, then a name mounted there as `ip netns add` mounts one.
SHARED_HOST = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[2])
from netns import _libc, mntns
run = sys.argv[1]
netns = os.path.join(run, "netns")
subprocess.run(["mount", "--make-rshared", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", run], check=True)
os.mkdir(netns)
subprocess.run(["mount", "--bind", netns, netns], check=True)
subprocess.run(["mount", "--make-shared", netns], check=True)
early = os.path.join(netns, "early")
open(early, "w").close()
_libc.mount("/proc/self/ns/net", early, "none", _libc.MS_BIND)
mntns.private_dir(os.path.join(run, "tpl"))
template = mntns.make(os.path.join(run, "tpl", "mnt"), [netns])
late = os.path.join(netns, "late")
open(late, "w").close()
_libc.mount("/proc/self/ns/net", late, "none", _libc.MS_BIND)
seen = subprocess.run(
    ["nsenter", "--mount=" + template.path, "cat", "/proc/self/mountinfo"],
    capture_output=True, text=True, check=True,
).stdout
for line in seen.splitlines():
    print("mount", line.split()[4])
"""


def test_on_a_host_with_shared_mounts_the_template_gets_no_name_before_or_after() -> None:
    """`ip netns add` on a systemd host mounts each name twice (on /run/netns and, hidden, on
    /run, its peer): the template has neither the names there when it was made nor those
    mounted after (each dyno would otherwise copy them all again, and keep them alive). Made
    from 8 mount namespaces other than the host's first, on whatever CPU: each is made (Linux
    6.18's per-CPU numbering refused 29 in 40 before make() tried each CPU: netns/mntns.py)."""
    for _ in range(8):
        run = tempfile.mkdtemp(prefix=f"dynod-{unique_prefix()}-")
        try:
            out = subprocess.run(
                ["unshare", "--mount", "--propagation", "unchanged", PYTHON, "-c", SHARED_HOST]
                + [run, os.getcwd()],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            points = [line.split()[1] for line in out.stdout.splitlines()]
            assert run in points  # the template has the /run stand-in...
            netns = os.path.join(run, "netns")
            assert [p for p in points if p.startswith(netns + "/")] == []  # ...no name
            assert points.count(netns) == 1  # only the empty cover
        finally:
            os.rmdir(run)
