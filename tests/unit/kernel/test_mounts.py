"""The mount template's decisions at a spawn (dynod/kernel/mounts.py): used while intact and
showing the dyno's filesystem, made again otherwise, and the host's mounts (with a warning, and
no new attempt for RETRY seconds) when it cannot be made. netns/mntns's kernel calls are
replaced by a recorder; no root needed (the real ones: tests/integration/test_mount_template.py).
"""

from __future__ import annotations

import pytest

from dynod.kernel import mounts
from netns import mntns


class FakeKernel:
    """Stands in for netns.mntns and namespace.ensure_run_dir: what was done, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.devices = frozenset({1, 2})
        self.fail: Exception | None = None
        self.intact = True
        self.identity = 0
        self.mounted = 0  # templates stacked on the file
        self.points: list[str] = ["/run/dynod-tstm"]  # the private directory is mounted
        monkeypatch.setattr(mounts.mntns, "remove", self.remove)
        monkeypatch.setattr(
            mounts.mntns, "private_dir", lambda d: self.calls.append(f"private {d}")
        )
        monkeypatch.setattr(mounts.mntns, "make", self.make)
        monkeypatch.setattr(mounts.mntns, "mount_points", lambda d: self.points)
        monkeypatch.setattr(mounts.mntns, "unmount", self.unmount)
        monkeypatch.setattr(mounts.namespace, "ensure_run_dir", lambda: None)
        monkeypatch.setattr(mntns.Template, "intact", lambda _: self.intact)

    def make(self, path: str, without: list[str]) -> mntns.Template:
        self.calls.append(f"make {path} without {' '.join(without)}")
        if self.fail is not None:
            raise self.fail
        self.identity += 1
        self.mounted += 1
        return mntns.Template(path, (0, self.identity), self.devices)

    def remove(self, directory: str) -> None:
        self.calls.append(f"remove {directory}")
        self.mounted = 0

    def unmount(self, path: str) -> bool:
        if not self.mounted:
            return False
        self.mounted -= 1
        self.calls.append(f"umount -l {path}")
        return True


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return FakeKernel(monkeypatch)


def template(said: list[str]) -> mounts.MountTemplate:
    return mounts.MountTemplate("tstm", said.append)


def test_made_in_its_own_private_directory_after_removing_a_stale_one(kernel: FakeKernel) -> None:
    said: list[str] = []
    made = template(said)
    made.make()
    assert kernel.calls == [
        "remove /run/dynod-tstm",
        "private /run/dynod-tstm",
        "make /run/dynod-tstm/mnt without /run/netns",
    ]
    assert made.for_dyno(1) == "/run/dynod-tstm/mnt"
    assert len(kernel.calls) == 3 and said == []  # intact and showing it: a stat, nothing more


def test_unmounted_by_someone_it_is_made_again_and_said(kernel: FakeKernel) -> None:
    said: list[str] = []
    made = template(said)
    made.make()
    kernel.intact = False
    kernel.mounted = 0  # unmounted by someone
    assert made.for_dyno(1) == "/run/dynod-tstm/mnt"
    assert kernel.calls[3:] == ["make /run/dynod-tstm/mnt without /run/netns"]
    assert said == [
        "the dynos' mount template /run/dynod-tstm/mnt was unmounted or replaced by someone "
        "else: made again"
    ]


def test_a_filesystem_mounted_since_makes_it_again_once(kernel: FakeKernel) -> None:
    said: list[str] = []
    made = template(said)
    made.make()
    kernel.devices = frozenset({1, 2, 3})
    assert made.for_dyno(3) == "/run/dynod-tstm/mnt"
    assert "had no mount of device 0:3 (mounted since): made again" in said[0]
    # the old one is unmounted first: it would hold the host's old filesystems until the stop
    assert kernel.calls[3:] == [
        "umount -l /run/dynod-tstm/mnt",
        "make /run/dynod-tstm/mnt without /run/netns",
    ]
    assert kernel.mounted == 1
    assert made.for_dyno(3) == "/run/dynod-tstm/mnt" and len(said) == 1


def test_a_device_no_fresh_template_lists_is_not_a_reason_each_time(kernel: FakeKernel) -> None:
    said: list[str] = []
    made = template(said)
    made.make()
    assert made.for_dyno(9) == "/run/dynod-tstm/mnt"  # a btrfs subvolume's st_dev, say
    calls = len(kernel.calls)
    assert made.for_dyno(9) == "/run/dynod-tstm/mnt"
    assert len(kernel.calls) == calls and len(said) == 1


def test_when_it_cannot_be_made_dynos_copy_the_host_and_it_waits_to_try_again(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    made = template(said)
    kernel.fail = OSError("unshare: mount failed")
    now = [100.0]
    monkeypatch.setattr(mounts.time, "monotonic", lambda: now[0])
    assert made.for_dyno(1) == ""
    assert said[0].startswith("warning: the dynos' mount template /run/dynod-tstm/mnt was missing")
    assert "unshare: mount failed" in said[0] and "copy the host's mounts" in said[0]
    tries = len(kernel.calls)
    now[0] += mounts.RETRY / 2
    assert made.for_dyno(1) == "" and len(kernel.calls) == tries and len(said) == 1
    now[0] += mounts.RETRY
    kernel.fail = None
    assert made.for_dyno(1) == "/run/dynod-tstm/mnt"
    assert said[-1].endswith("was missing: made again")


def test_a_failed_make_leaves_nothing(kernel: FakeKernel) -> None:
    made = template([])
    kernel.fail = OSError("no")
    with pytest.raises(OSError):
        made.make()
    assert kernel.calls[-1] == "remove /run/dynod-tstm" and made.made is None


def test_entered_puts_nsenter_before_the_program() -> None:
    argv = mntns.entered("/run/dynod-x/mnt", ["unshare", "--mount", "true"])
    assert argv == ["nsenter", "--mount=/run/dynod-x/mnt", "--", "unshare", "--mount", "true"]


def test_a_removal_in_the_way_is_said_and_the_stop_goes_on(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    made = template(said)
    made.make()

    def refuse(directory: str) -> None:
        raise IsADirectoryError(21, "Is a directory", f"{directory}/someone")

    monkeypatch.setattr(mounts.mntns, "remove", refuse)
    made.remove()
    assert made.made is None
    assert said == [
        "warning: the dynos' mount template /run/dynod-tstm was not removed: "
        "[Errno 21] Is a directory: '/run/dynod-tstm/someone'"
    ]


def test_made_again_with_its_directory_gone_the_directory_is_made_first(kernel: FakeKernel) -> None:
    made = template([])
    made.make()
    kernel.intact, kernel.points = False, []
    assert made.for_dyno(1) == "/run/dynod-tstm/mnt"
    assert kernel.calls[3:] == [
        "remove /run/dynod-tstm",
        "private /run/dynod-tstm",
        "make /run/dynod-tstm/mnt without /run/netns",
    ]
