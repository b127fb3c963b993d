"""rules/procfile.py: Procfiles read as Heroku, foreman and honcho read them; a line that is not
`type: command` is refused with its number."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynod.errors import DynodError
from dynod.rules import procfile


def test_lines_comments_and_blank_lines() -> None:
    text = (
        "# comment\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n\n  worker:python w.py  \n"
        "clock_2-x: sh -c 'echo a: b'\r\n"
    )
    assert procfile.parse(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "python w.py",
        "clock_2-x": "sh -c 'echo a: b'",
    }


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("web: a\nbad line\n", 2, "'bad line' is not `type: command`"),
        ("web: a\n\n# c\nweb.1: b\n", 4, "is not `type: command`"),
        ("web: a\nworker:\n", 2, "'worker' process type has no command"),
        ("web: a\nweb: b\n", 2, "'web' process type is defined twice"),
        ("wéb: a\n", 1, "is not `type: command`"),
    ],
)
def test_a_syntax_error_names_the_line(text: str, line: int, says: str) -> None:
    with pytest.raises(DynodError) as caught:
        procfile.parse(text, "/srv/app/Procfile")
    assert caught.value.problem.startswith(f"/srv/app/Procfile, line {line}: ")
    assert says in caught.value.problem
    assert caught.value.fix


def test_read_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DynodError, match="no Procfile in"):
        procfile.read(str(tmp_path))
    (tmp_path / "Procfile").write_text("web: python3 -m http.server $PORT\n")
    commands = procfile.read(str(tmp_path))
    assert procfile.command(commands, "web", str(tmp_path)) == "python3 -m http.server $PORT"
    with pytest.raises(DynodError, match=r"no 'worker' process type \(it has: web\)"):
        procfile.command(commands, "worker", str(tmp_path))
