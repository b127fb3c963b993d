"""What a daemon owns on the host before it builds anything: root, the tools dynos need, its
state directory (private), the locks that make it the only daemon of its state directory and
of its prefix, and the user id its router workers run as. Taken first by compose.py; released
last."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import stat
from collections.abc import Callable

from dynod.config import Config
from dynod.errors import DynodError
from netns import identity

PRIVATE_UMASK = 0o077
LOCK_DIR = "/run"


class Claim:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock_fds: list[int] = []
        self.made_private: list[str] = []  # what an older dynod had left readable
        # the router workers' user id (netns/identity.py); None: no workers
        self.router_user: identity.Reserved | None = None

    @classmethod
    def take(cls, config: Config) -> Claim:
        """Everything or nothing: a refusal releases what was taken."""
        claim = cls(config)
        try:
            claim._take()
        except BaseException:
            # the prefix's lock file goes only if both locks were ours (release checks): a
            # daemon refused for a busy socket leaves no lock file of its own behind
            claim.release()
            raise
        return claim

    def _take(self) -> None:
        self._preflight()
        # Everything the daemon makes is root's alone unless it says otherwise: the state holds
        # every dyno's environment (secrets), the log every app's lines. Dynos get 022 back.
        os.umask(PRIVATE_UMASK)
        make_private_dir(self.config.state_dir)
        os.makedirs(self.output_dir, mode=0o700, exist_ok=True)
        self._take_locks()
        # An older dynod's shared fstab files (one per network and size, now one per dyno in
        # hosts_dir): read by `mount -a` at a dyno's start only, so no running dyno needs them.
        shutil.rmtree(os.path.join(self.config.state_dir, "fstab"), ignore_errors=True)
        # A state directory of an older dynod (0755, files 0644) is made private, before any
        # dyno starts.
        self.made_private = make_private_tree(
            self.config.state_dir, readable=self._readable_by_dynos
        )
        self._check_socket_free()
        if self.config.router_workers > 0:
            try:
                self.router_user = identity.reserve_uid(
                    self.config.prefix, f"dynod-router-{self.config.prefix}"
                )
            except RuntimeError as exc:
                raise DynodError(
                    f"no user id is free for the router's workers: {exc}",
                    "stop a service that runs as a dynamic user, or start the daemon with "
                    "--router-workers 0 (the router in the daemon)",
                ) from None

    def release(self, remove_prefix_lock: bool = True) -> None:
        if self.router_user is not None:
            self.router_user.release()
            self.router_user = None
        if remove_prefix_lock and len(self.lock_fds) == 2:
            # both ours: the prefix's lock file is ours to remove
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.prefix_lock_path)
        for fd in self.lock_fds:
            os.close(fd)
        self.lock_fds = []

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise DynodError(
                "dynod daemon must run as root: it creates namespaces, links and nftables tables",
                "start it with `sudo dynod daemon`",
            )
        for tool in ("setpriv", "unshare", "nsenter"):  # all three are util-linux's
            if shutil.which(tool) is None:
                raise DynodError(f"{tool} is missing (dynos need it)", "apt-get install util-linux")

    def _readable_by_dynos(self, path: str) -> bool:
        """The resolv.conf, hosts and hostname files: bound over a dyno's /etc/resolv.conf,
        /etc/hosts and /etc/hostname, read as its user."""
        folder = os.path.dirname(path)
        return (folder == self.config.resolv_dir and path.endswith(".conf")) or (
            folder == self.config.hosts_dir and path.endswith((".hosts", ".hostname"))
        )

    @property
    def output_dir(self) -> str:
        return os.path.join(self.config.state_dir, "output")

    def _take_locks(self) -> None:
        """One daemon per state directory, and one per prefix: a second daemon with the same
        prefix would take the first one's namespaces for leftovers and remove them."""
        self._lock(
            os.path.join(self.config.state_dir, "lock"),
            f"another dynod daemon (pid {{owner}}) already uses {self.config.state_dir}",
        )
        self._lock(
            self.prefix_lock_path,
            f"another dynod daemon (pid {{owner}}) already uses the prefix {self.config.prefix!r}",
        )

    @property
    def prefix_lock_path(self) -> str:
        return os.path.join(LOCK_DIR, f"dynod-{self.config.prefix}.lock")

    def _lock(self, path: str, problem: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode().strip() or "?"
            os.close(fd)
            raise DynodError(
                problem.format(owner=owner),
                "stop it first, or give this one its own --state-dir, --socket and --prefix",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fds.append(fd)

    def _check_socket_free(self) -> None:
        path = self.config.socket
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise DynodError(
                f"{path} exists and is not a socket", "remove it, or give another --socket"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # left by a daemon that died: nobody answers on it
            return
        finally:
            probe.close()
        raise DynodError(
            f"another dynod daemon is already listening on {path}",
            "stop it first, or give this one another --socket",
        )


def make_private_dir(path: str) -> None:
    """`install -d -m 0700 PATH`: parents made as needed (root's alone too, under the umask),
    and an existing directory's mode fixed, so its tree cannot be reached by anyone else."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def make_private_tree(root: str, readable: Callable[[str], bool]) -> list[str]:
    """`chmod 0700` every directory and `chmod 0600` every file under root (0644 for those
    readable(path) allows); symlinks and other special files are left alone, and nothing is
    followed out of the tree. Returns the paths whose mode was changed."""
    changed = []
    for top, dirs, files in os.walk(root):
        for name, is_dir in [(d, True) for d in dirs] + [(f, False) for f in files]:
            path = os.path.join(top, name)
            info = os.lstat(path)
            if is_dir and stat.S_ISDIR(info.st_mode):
                wanted = 0o700
            elif not is_dir and stat.S_ISREG(info.st_mode):
                wanted = 0o644 if readable(path) else 0o600
            else:
                continue  # a symlink (never followed) or a socket
            if stat.S_IMODE(info.st_mode) != wanted:
                os.chmod(path, wanted)
                changed.append(path)
    return changed
