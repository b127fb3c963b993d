"""Each dyno's hostname: a UUID of its own, as Heroku gives each dyno its id as its hostname,
which its own /etc/hosts gives its address (netns/hosts.py); the host's name and /etc/hosts
stay as they were. The files live while the dyno does, in a tmpfs of the daemon's: a stop
removes them, a restarted daemon keeps those of the dynos it adopts (and the tmpfs) and removes
the rest, and its stop removes the tmpfs and the directory; a tmpfs someone unmounted comes
back at the next start."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DaemonProc, named_mounts, sh, state_in_memory

pytestmark = pytest.mark.root

# What a dyno says about its name: the name, what its /etc/hosts and a lookup make of it, its
# /etc/hostname, and whether its user can change its hosts file or its name
LOOK = (
    "hostname; getent hosts $(hostname); cat /etc/hosts; cat /etc/hostname; "
    "{ echo x >> /etc/hosts; } 2>/dev/null && echo hosts-writable; "
    "hostname other 2>/dev/null && echo hostname-settable; echo end"
)


@pytest.fixture
def daemon() -> Iterator[DaemonProc]:
    d = DaemonProc()
    try:
        yield d.start()
    finally:
        found = d.close()
        assert not found, f"the daemon left kernel objects behind: {found}"


def look(d: DaemonProc, app: str) -> list[str]:
    status, lines = d.run_once(app, "run", LOOK)
    assert status == 0, lines
    return [line.split(": ", 1)[1] if ": " in line else line for line in lines]


def files_of(netns: str) -> list[str]:
    return [f"{netns}.fstab", f"{netns}.hostname", f"{netns}.hosts"]


def hosts_dir(d: DaemonProc) -> Path:
    return Path(d.state_dir) / "hosts"


def own_tmpfs(d: DaemonProc) -> list[str]:
    """Where the daemon's tmpfs for the files is: its hosts directory, unless its whole state
    directory is in memory already (a /tmp on a tmpfs), which needs none."""
    return [] if state_in_memory(d.state_dir) else [str(hosts_dir(d))]


def test_each_dyno_is_named_by_a_uuid_its_hosts_file_resolves(daemon: DaemonProc) -> None:
    host_name, host_hosts = socket.gethostname(), Path("/etc/hosts").read_bytes()
    worker = daemon.run("named", "worker", "sleep 60")
    first, second = look(daemon, "named"), look(daemon, "named")
    names = {first[0], second[0]}
    assert len(names) == 2 and all(str(uuid.UUID(n)) == n for n in names), (first, second)
    for seen in (first, second):
        name, resolved = seen[0], seen[1].split()
        assert resolved[1:] == [name] and resolved[0].startswith("172."), seen
        assert "127.0.0.1\tlocalhost" in seen and f"{resolved[0]}\t{name}" in seen
        assert seen[-2] == name  # /etc/hostname: the name, not the host's
        assert "hosts-writable" not in seen and "hostname-settable" not in seen
        assert seen[-1] == "end"
    # the one-offs' files went with them (their teardown follows the exit the CLI was sent);
    # the worker's are there, named as its namespace
    netns = daemon.netns("named", worker["name"])
    daemon.wait_for(
        lambda: sorted(os.listdir(hosts_dir(daemon))) == files_of(netns), "the one-offs' files gone"
    )
    assert named_mounts(daemon.prefix) == own_tmpfs(daemon)  # in memory, named for us
    assert (hosts_dir(daemon) / f"{netns}.hosts").stat().st_mode & 0o777 == 0o644
    assert socket.gethostname() == host_name
    assert Path("/etc/hosts").read_bytes() == host_hosts
    daemon.stop_dyno("named")
    assert os.listdir(hosts_dir(daemon)) == []


def test_a_restarted_daemon_keeps_its_dynos_files_and_removes_the_rest(
    daemon: DaemonProc,
) -> None:
    kept = daemon.run("kept", "worker", "sleep 60")
    netns = daemon.netns("kept", kept["name"])
    device = hosts_dir(daemon).stat().st_dev
    daemon.kill9()
    stray = hosts_dir(daemon) / f"{daemon.prefix}-gone.web.1"
    for suffix in (".hosts", ".fstab", ".hosts.new"):
        Path(f"{stray}{suffix}").write_text("left by a killed daemon\n")
    daemon.start()
    daemon.wait_for(
        lambda: sorted(os.listdir(hosts_dir(daemon))) == files_of(netns),
        "only the adopted dyno's files",
    )
    assert (hosts_dir(daemon) / f"{netns}.hosts").stat().st_mode & 0o777 == 0o644
    assert hosts_dir(daemon).stat().st_dev == device  # the killed daemon's tmpfs, kept
    assert named_mounts(daemon.prefix) == own_tmpfs(daemon)
    assert daemon.terminate() == 0
    assert not hosts_dir(daemon).exists() and not named_mounts(daemon.prefix)


def test_a_start_after_someone_unmounted_the_files_tmpfs_mounts_it_again(
    daemon: DaemonProc,
) -> None:
    """The files of a running dyno are bound in its own mount namespace: they outlive the
    host's mount. The next start mounts a new tmpfs, and a template that shows it."""
    if state_in_memory(daemon.state_dir):
        pytest.skip("the state directory is in memory already: no tmpfs of the daemon's")
    worker = daemon.run("lost", "worker", "sleep 60")
    first = look(daemon, "lost")
    device = hosts_dir(daemon).stat().st_dev
    sh("umount", "-l", str(hosts_dir(daemon)))
    assert not named_mounts(daemon.prefix)
    second = look(daemon, "lost")  # fails before: the bind's file is not where the chain looks
    assert second[1].split()[1:] == [second[0]] and second[0] != first[0], second
    assert named_mounts(daemon.prefix) == [str(hosts_dir(daemon))]
    assert hosts_dir(daemon).stat().st_dev != device
    assert "mount template" in daemon.log() and "made again" in daemon.log()
    # the worker started before still has its own files
    netns = daemon.netns("lost", worker["name"])
    inside = sh("ip", "netns", "exec", netns, "nsenter", "-t", str(worker_pid(netns)), "-m",
                "cat", "/etc/hostname").stdout.strip()  # fmt: skip
    assert str(uuid.UUID(inside)) == inside


def worker_pid(netns: str) -> int:
    """The first process of the dyno's pid namespace (its init), as the host numbers it."""
    pids = [int(p) for p in sh("ip", "netns", "pids", netns).stdout.split()]
    return min(pids)


def test_a_state_directory_reached_through_a_symlink_keeps_one_tmpfs_across_a_sigkill() -> None:
    """The tmpfs is known by its device, not by the path mountinfo gives (the symlink's
    target): a restarted daemon keeps the killed one's (fails before: a second one was mounted
    over it, or none and a warning, and the first one was left behind at the stop)."""
    d = DaemonProc()
    real = d.dir / "real-state"
    real.mkdir()
    (d.dir / "state-link").symlink_to(real)
    d.state_dir = str(d.dir / "state-link")
    try:
        d.start()
        kept = d.run("linked", "worker", "sleep 60")
        netns = d.netns("linked", kept["name"])
        device = hosts_dir(d).stat().st_dev
        d.kill9()
        d.start()
        d.wait_for(lambda: sorted(os.listdir(hosts_dir(d))) == files_of(netns), "its files")
        assert hosts_dir(d).stat().st_dev == device
        assert len(named_mounts(d.prefix)) == len(own_tmpfs(d))
        assert "stays on disk" not in d.log()
        assert d.terminate() == 0
        assert not named_mounts(d.prefix)
    finally:
        found = d.close()
        assert not found, f"the daemon left kernel objects behind: {found}"
