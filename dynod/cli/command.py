"""The command line `dynod run` sends to the dyno's /bin/sh -c, read from the words after `--`
as `heroku run` reads them (heroku/cli, packages/run, buildCommand)."""

from __future__ import annotations


def build_command(args: tuple[str, ...] | list[str]) -> str:
    """One word is the whole command line (`dynod run -- 'rake test'` is `rake test`). Of several,
    a word holding a space or a `"` is wrapped in double quotes with its `"` escaped, so
    `-- sh -c 'exec python3 server.py'` reaches the shell as `sh -c "exec python3 server.py"`.
    Other words go as they are: `'$PORT'` still expands inside the dyno."""
    if len(args) == 1:
        return args[0]
    return " ".join(_quoted(arg) for arg in args)


def _quoted(arg: str) -> str:
    if " " in arg or '"' in arg:
        return '"' + arg.replace('"', '\\"') + '"'
    return arg
