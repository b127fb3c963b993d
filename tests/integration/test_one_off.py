"""One-off dynos (`dynod run --app A -- CMD`, no --type): run.N attached to the caller through
the real CLI and daemon, on a pseudo-terminal when the CLI's stdin is one (driven here through
`pty.fork`, as a user's terminal), or on pipes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support import DaemonProc, link_names, netns_names, running_daemon

pytestmark = pytest.mark.root

WAIT = 30.0  # seconds a step may take on a loaded machine before the test gives up


class Terminal:
    """`dynod run` on a pseudo-terminal of its own: what a user types, what they see."""

    def __init__(
        self, d: DaemonProc, app: str, argv: list[str], rows: int, cols: int, options: list[str]
    ) -> None:
        self.seen = b""
        pid, fd = pty.fork()
        if pid == 0:  # the child: the user's shell, on a terminal of rows x cols
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.chdir(d.app_dir)
                os.environ["DYNOD_SOCKET"] = d.socket
                cli = [sys.executable, "-m", "dynod", "run", "--app", app, *options]
                cli += ["--", *argv]
                # after the CLI: its status, and whether the terminal is cooked again
                script = '"$@"; echo "cli-status=$?"; stty -a; echo end-of-test'
                os.execv("/bin/sh", ["/bin/sh", "-c", script, "sh", *cli])
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, wanted: bytes, timeout: float = WAIT) -> bytes:
        """Read until `wanted` has been seen (after what earlier expects consumed)."""
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {wanted!r}; the terminal showed {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the terminal closed before {wanted!r}: {self.seen!r}")
                self.seen += chunk
        before, _, self.seen = self.seen.partition(wanted)
        return before + wanted

    def resize(self, rows: int, cols: int) -> None:
        """As a terminal emulator does: TIOCSWINSZ on the master; the kernel sends SIGWINCH to
        the terminal's foreground process group (the CLI)."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@contextlib.contextmanager
def terminal(
    d: DaemonProc,
    app: str,
    argv: list[str],
    rows: int = 24,
    cols: int = 80,
    options: tuple[str, ...] = (),
) -> Iterator[Terminal]:
    term = Terminal(d, app, argv, rows, cols, list(options))
    try:
        yield term
    finally:
        term.close()


def cli_status(term: Terminal) -> int:
    """The CLI's exit status, and a check that it left the terminal cooked (echo, icanon)."""
    shown = term.expect(b"end-of-test").decode(errors="replace")
    status = int(shown.split("cli-status=", 1)[1].split()[0])
    settings = shown.split("cli-status=", 1)[1].split()
    assert "icanon" in settings and "echo" in settings and "isig" in settings, shown
    return status


def test_a_shell_on_a_terminal_sees_its_tty_the_window_size_and_ctrl_c_and_ctrl_d() -> None:
    with running_daemon() as d, terminal(d, "termy", ["sh"], rows=31, cols=97) as term:
        term.send(
            b"tty; stty size; [ -O $(tty) ] && echo owned; echo port=${PORT-none} dyno=$DYNO\n"
        )
        shown = term.expect(b"port=none dyno=run.1")
        assert b"/dev/pts/" in shown and b"\r\n31 97\r\nowned\r\n" in shown, shown
        assert d.dyno("termy", "run.1")["port"] is None
        # a resize of the user's terminal reaches the dyno's
        term.resize(44, 123)
        for _ in range(50):
            term.send(b"stty size\n")
            time.sleep(0.1)
            term.expect(b"$ ")
            with contextlib.suppress(AssertionError):
                term.expect(b"44 123", timeout=0.5)
                break
        else:
            raise AssertionError("the new window size never reached the dyno")
        # Ctrl-C interrupts the foreground job, through the dyno's line discipline; the shell
        # lives on, and sees 130 as on a real terminal
        term.send(b"sleep 100\n")
        term.expect(b"sleep 100")
        time.sleep(0.5)
        term.send(b"\x03")
        term.send(b"echo status=$?\n")
        term.expect(b"status=130")
        # Ctrl-Z stops the foreground job (the shell's job control works on the dyno's tty)
        term.send(b"sleep 100\n")
        term.expect(b"sleep 100")
        time.sleep(0.5)
        term.send(b"\x1a")
        term.expect(b"Stopped")
        term.send(b"kill -9 %1; wait; echo killed\n")
        term.expect(b"killed\r\n")
        # Ctrl-D ends cat
        term.send(b"cat\n")
        term.expect(b"cat")
        term.send(b"typed\n")
        term.expect(b"typed")
        term.expect(b"typed")  # echoed by the terminal, then written by cat
        term.send(b"\x04")
        term.send(b"echo after-cat\n")
        term.expect(b"after-cat\r\n")
        term.send(b"exit 7\n")
        assert cli_status(term) == 7
        d.wait_for(lambda: not d.dynos("termy"), "run.1 gone")


def test_ctrl_c_ends_a_command_with_130_as_a_terminal_would() -> None:
    with running_daemon() as d, terminal(d, "intr", ["sh", "-c", "echo ready; sleep 100"]) as term:
        term.expect(b"ready")
        term.send(b"\x03")
        assert cli_status(term) == 130


def the_cli(term: Terminal) -> psutil.Process:
    """The `dynod run` process below the test terminal's shell."""
    below = psutil.Process(term.pid).children(recursive=True)
    found = [p for p in below if "dynod" in p.cmdline()]
    assert found, "the CLI process"
    return found[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_the_cli_killed_by_a_signal_restores_the_terminal_and_the_dyno_stops(
    sig: signal.Signals,
) -> None:
    with running_daemon() as d, terminal(d, "sigs", ["sh", "-c", "echo ready; sleep 100"]) as term:
        term.expect(b"ready")
        cli = the_cli(term)
        cli.send_signal(sig)
        try:
            status = cli_status(term)
        except AssertionError as exc:  # seen once in a full run, never alone: say what it did
            raise AssertionError(f"{exc}\nthe CLI then: {state_of(cli.pid)}") from None
        assert status == 128 + sig  # and the terminal is cooked again
        d.wait_for(lambda: not d.dynos("sigs"), "the one-off stopped")


def state_of(pid: int) -> str:
    """A process's state, signal masks and where it waits in the kernel (/proc/PID/status,
    wchan and stack of each thread), for a failure's message."""
    shown = []
    try:
        with open(f"/proc/{pid}/status") as f:
            wanted = ("State", "Threads", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            shown += [line.strip() for line in f if line.startswith(wanted)]
        for task in sorted(os.listdir(f"/proc/{pid}/task")):
            with open(f"/proc/{pid}/task/{task}/wchan") as f:
                wchan = f.read()
            with open(f"/proc/{pid}/task/{task}/stack") as f:
                stack = " < ".join(line.split()[-1] for line in f)
            shown.append(f"thread {task}: wchan {wchan}; {stack}")
    except OSError as exc:
        shown.append(f"({exc})")
    return "; ".join(shown)


def test_a_closed_terminal_ends_the_cli_with_129_and_stops_the_one_off() -> None:
    """The terminal closes (its window, an ssh connection): reads and writes on it fail (EIO),
    and SIGHUP goes to the session leader only (here a shell that ignores it, as `nohup` or a
    shell that does not forward it would). The CLI ends as SIGHUP would end it, 129, and the
    one-off stops with it, as `heroku run`'s session does."""
    with running_daemon() as d:
        status_read, status_write = os.pipe()
        pid, fd = pty.fork()
        if pid == 0:  # the session leader of the terminal, ignoring SIGHUP
            try:
                os.close(status_read)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                os.chdir(d.app_dir)
                os.environ["DYNOD_SOCKET"] = d.socket
                cli = [sys.executable, "-m", "dynod", "run", "--app", "hup", "--"]
                cli += ["sh", "-c", "echo ready; sleep 100"]
                done = subprocess.run(cli, timeout=WAIT)
                os.write(status_write, str(done.returncode).encode())
            finally:
                os._exit(0)
        os.close(status_write)
        try:
            term = Terminal.__new__(Terminal)
            term.seen, term.pid, term.fd = b"", pid, fd
            term.expect(b"ready")
            os.close(fd)  # the terminal goes away
            ready, _, _ = select.select([status_read], [], [], WAIT + 5)
            assert ready, "the CLI never ended"
            assert os.read(status_read, 64) == b"129"
            d.wait_for(lambda: not d.dynos("hup"), "the one-off stopped")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            os.close(status_read)


def test_stdin_piped_in_reaches_the_dyno_and_its_exit_status_comes_back() -> None:
    with running_daemon() as d:
        env = {**os.environ, "DYNOD_SOCKET": d.socket}
        cli = [sys.executable, "-m", "dynod", "run", "--app", "pipes", "--"]
        piped = subprocess.run(
            [*cli, "cat /dev/stdin"],
            input="hi\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert (piped.returncode, piped.stdout) == (0, "hi\n"), piped.stderr
        # one word is the whole command line, as with heroku run
        script = "read line; echo got $line; echo oops >&2; exit 5"
        status = subprocess.run(
            [*cli, script], input="x y\n", capture_output=True, text=True, env=env, timeout=60
        )
        assert status.returncode == 5, status.stderr
        assert (status.stdout, status.stderr) == ("got x y\n", "oops\n")
        # stdin redirected from a file (which epoll would refuse)
        with open(d.app_dir / "input.txt", "w+") as given:
            given.write("from a file\n")
            given.seek(0)
            filed = subprocess.run(
                [*cli, "cat"], stdin=given, capture_output=True, text=True, env=env, timeout=60
            )
        assert (filed.returncode, filed.stdout) == (0, "from a file\n"), filed.stderr
        # the reader of its output gone, the CLI ends and the dyno with it
        head = subprocess.run(
            ["/bin/sh", "-c", '"$@" | head -n 1', "sh", *cli, "yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert head.stdout == "y\n", head.stderr
        d.wait_for(lambda: not d.dynos("pipes"), "the one-off stopped")
        # --no-tty with a terminal on stdin: pipes still (the dyno's stdin is no terminal)
        argv = ["[ -t 0 ] || [ -t 1 ] || echo no-tty"]
        with terminal(d, "pipes", argv, options=("--no-tty",)) as term:
            term.expect(b"no-tty")
            assert cli_status(term) == 0


def test_two_one_offs_are_run_1_and_run_2_without_port_nor_route() -> None:
    with running_daemon() as d:
        env = {**os.environ, "DYNOD_SOCKET": d.socket}
        script = 'echo "port=${PORT-none}"; cat'
        clis = [
            subprocess.Popen(
                [sys.executable, "-m", "dynod", "run", "--app", "lonely", "--", "sh", "-c", script],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(2)
        ]
        try:
            for cli in clis:
                assert cli.stdout is not None
                assert cli.stdout.readline() == b"port=none\n"
            dynos = d.dynos("lonely")
            assert sorted(x["name"] for x in dynos) == ["run.1", "run.2"]
            assert all(x["port"] is None and x["type"] == "run" for x in dynos)
            listed = d.cli("ps", "--app", "lonely")
            assert "run.1" in listed.stdout and "run.2" in listed.stdout
            assert d.via_router("lonely")[0] == 503
            d.wait_for(lambda: "code=H14" in d.log(), "the router's H14")
            for cli in clis:
                assert cli.stdin is not None
                cli.stdin.close()  # EOF: cat ends, and so does the dyno
                assert cli.wait(60) == 0
        finally:
            for cli in clis:
                cli.kill()
                cli.wait()


def test_a_flooding_one_off_stays_bounded_and_killing_its_cli_stops_it() -> None:
    with running_daemon() as d, terminal(d, "flood", ["sh", "-c", "echo start; exec yes"]) as term:
        term.expect(b"start")
        # nobody reads the terminal now: the CLI blocks on it, the daemon stops reading the
        # dyno's pty, and `yes` waits on its full terminal
        daemon = psutil.Process(d.proc.pid if d.proc else 0)
        time.sleep(1.0)
        before = daemon.memory_info().rss
        time.sleep(3.0)
        grown = daemon.memory_info().rss - before
        assert grown < 32 << 20, f"the daemon grew by {grown >> 20} MiB"
        dyno = d.dyno("flood", "run.1")
        netns, veth, pid = d.netns("flood", "run.1"), dyno["veth"], dyno["pid"]
        assert netns in netns_names()
        the_cli(term).kill()
        d.wait_for(lambda: not d.dynos("flood"), "the one-off stopped", timeout=60)
        assert netns not in netns_names()
        # the kernel destroys the veth with the namespace, in its own time
        d.wait_for(lambda: veth not in link_names(), "the one-off's veth gone")
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
