"""What dynod asks of a dyno's processes: are they alive, do they listen, stop them."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import signal
from collections.abc import Mapping

import psutil

from dynod.errors import DynodError
from netns import record

# Words /bin/sh runs itself: they are never looked up in PATH.
SHELL_WORDS = {
    ".",
    ":",
    "[",
    "alias",
    "bg",
    "break",
    "case",
    "cd",
    "command",
    "continue",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fg",
    "for",
    "getopts",
    "hash",
    "if",
    "jobs",
    "kill",
    "printf",
    "pwd",
    "read",
    "readonly",
    "return",
    "set",
    "shift",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
    "while",
    "until",
    "echo",
    "{",
    "(",
    "!",
}

# Words a command may not begin with to run in its shell's place (in_place): sh's own
# commands and reserved words, and bash's, which `exec` would look up as programs instead.
NOT_PROGRAMS = SHELL_WORDS | {
    *("chdir", "fc", "jobid", "local", "setvar", "source", "let", "declare", "typeset"),
    *("function", "select", "time", "coproc", "builtin", "enable", "shopt", "disown"),
    *("then", "do", "done", "elif", "else", "fi", "esac", "in", "}", "[[", "]]"),
    *("bind", "caller", "compgen", "complete", "compopt", "dirs", "help", "history", "logout"),
    *("mapfile", "popd", "pushd", "readarray", "suspend"),
}
# A first word that is a program's name or path as written: nothing in it is expanded (no `$`,
# glob or assignment; a `~` only as the start of a path, `~/x` or `~user/x`, which is a path
# whatever it expands to), so what it names cannot turn out to be one of NOT_PROGRAMS. Not
# starting with `-` or `+`, which sh -c would take for its own options.
PLAIN_PROGRAM = re.compile(r"(?:[A-Za-z0-9_./:,]|~[A-Za-z0-9_.-]*/)[A-Za-z0-9_./:+,~-]*")
# What can end a simple command or start another one (operators, redirections, subshells,
# command substitution, comments, quotes that could hide any of them, a line break).
NOT_SIMPLE = frozenset(";&|<>()`'\"\\#\n\r")

# The characters of sh's operators and redirections (shlex's punctuation_chars)
SHELL_OPERATOR_CHARS = "();<>|&"
TCP_LISTEN = "0A"
# A command travels as one argument of `sh -c` (the kernel takes at most 128 KiB per argument),
# and is parsed here before anything is set up: 32 KiB is more than any Procfile line.
MAX_COMMAND = 32 << 10


def start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """The same process we started: alive, not a zombie, and not a reused PID."""
    if not pid or started is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses on which something in pid's network namespace listens on TCP port
    (`ss -ltn sport = :PORT`). /proc/PID/net/tcp shows the sockets of that process's namespace,
    so no namespace switch is needed."""
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) <= 3 or fields[3] != TCP_LISTEN:
                        continue
                    address, _, hex_port = fields[1].rpartition(":")
                    if int(hex_port, 16) == port:
                        found.add(_address(address))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6} prints addresses as host-order 32-bit words in hex."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def reachable_on(addresses: set[str], ip: str) -> bool:
    """Would a connection to ip reach a socket bound to one of these addresses?"""
    return bool(addresses & {"0.0.0.0", "::", ip, f"::ffff:{ip}"})


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, sig)
    if pids:
        record.note("kill", f"-{sig.name.removeprefix('SIG')}", *(str(p) for p in pids))


def check_command(command: str, cwd: str, path: str) -> None:
    """Refuse a command whose program does not exist, before anything is set up for it.

    The dyno runs `/bin/sh -c COMMAND`; we look up the first word the way sh would, skipping
    `VAR=value` assignments and words sh runs itself.
    """
    if not command.strip():
        raise DynodError("no command given", "pass one after --, or add the type to ./Procfile")
    if len(command) > MAX_COMMAND:
        raise DynodError(
            f"the command is {len(command)} characters long; at most {MAX_COMMAND} are taken",
            "put a long command in a script and run the script",
        )
    if not os.path.isdir(cwd):
        raise DynodError(f"directory {cwd} does not exist", "run dynod from an existing directory")
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError as exc:
        raise DynodError(f"cannot parse command {command!r}: {exc}", "check its quotes") from exc
    program = _first_program(words)
    if not program or program in SHELL_WORDS or "$" in program:
        return
    if "/" in program:
        full = os.path.join(cwd, program)
        if not os.path.isfile(full) or not os.access(full, os.X_OK):
            raise DynodError(
                f"command not found: {program} (no executable file at {full})",
                "check the path, or make the file executable",
            )
        return
    if shutil.which(program, path=path) is None:
        raise DynodError(
            f"command not found: {program} (not in PATH={path})",
            "install it, give its full path, or fix PATH with --env PATH=...",
        )


def in_place(command: str) -> str:
    """The command as the dyno's shell is given it: `exec COMMAND` when it is one simple command
    of plain words (`sleep 3600`, `bundle exec puma -p $PORT`), so that its program takes the
    shell's place instead of being its child, as `bash -c` does with such a command (dash, our
    /bin/sh, forks and waits). The words are expanded as before and the dyno has one process
    (and about 0.5 ms of a start's CPU) fewer. What it ends with is the program's own status,
    as on Heroku: at a stop, a program that exits cleanly on SIGTERM now says 0 where the shell
    between said 143, and a name found in PATH that its user may not run says 126 (POSIX's
    "found, not executable") where the shell said 127; errors read `exec: NAME: ...`. Anything
    else (a list, a pipeline, a redirection, quotes, a backslash, a comment, a line break, an
    assignment, a word the shell runs itself or one only known once expanded) is left as is."""
    words = command.split()
    if not words or NOT_SIMPLE.intersection(command):
        return command
    first = words[0]
    if first in NOT_PROGRAMS or not PLAIN_PROGRAM.fullmatch(first):
        return command
    return f"exec {command}"


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_script(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for /bin/sh: any value, quotes and newlines included."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def check_env_name(name: str) -> None:
    if not ENV_NAME.fullmatch(name):
        raise DynodError(
            f"invalid environment variable name {name!r}",
            "use letters, digits and '_', not starting with a digit (--env NAME=VALUE)",
        )


def _first_program(words: list[str]) -> str:
    """The program of the first simple command, as sh finds it: past `NAME=value` assignments
    and redirections (`> log`, `2>&1`, `2>/dev/null`: an operator with `<` or `>`, its target,
    and a file descriptor's number just before it); "" when that command has none before an
    operator ends it (`X=1; ...`: nothing to look up, sh takes it as it is)."""
    at = 0
    while at < len(words):
        word = words[at]
        if _is_assignment(word):
            at += 1
        elif word.isdigit() and at + 1 < len(words) and _is_redirection(words[at + 1]):
            at += 1  # the descriptor of `2>...`
        elif _is_redirection(word):
            at += 2  # the operator and its target
        elif not word.strip(SHELL_OPERATOR_CHARS):
            return ""  # `;`, `&&`, `|`...: the first command ended without a program
        else:
            return word
    return ""


def _is_redirection(word: str) -> bool:
    return not word.strip(SHELL_OPERATOR_CHARS) and ("<" in word or ">" in word)


def _is_assignment(word: str) -> bool:
    name, eq, _ = word.partition("=")
    return bool(eq) and name.replace("_", "a").isalnum() and not name[0].isdigit()
