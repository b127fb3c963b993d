"""`dynod run`'s command line from the words after `--`, as heroku/cli's buildCommand reads them."""

from __future__ import annotations

import pytest

from dynod.cli.command import build_command
from tests.unit.fake_daemon import FakeApi


@pytest.mark.parametrize(
    ("words", "line"),
    [
        (["sh", "-c", "exec python3 server.py"], 'sh -c "exec python3 server.py"'),
        (["rake test"], "rake test"),  # one word is the whole line, never quoted
        (['echo "hi"'], 'echo "hi"'),
        (["python3", "-m", "http.server", "$PORT"], "python3 -m http.server $PORT"),
        (["echo", 'say "hi"'], 'echo "say \\"hi\\""'),
        (["echo", 'a"b'], 'echo "a\\"b"'),
        (["echo", "it's"], "echo it's"),  # only a space or a " quotes a word, as on Heroku
        (["printf", "%s\n", "x"], "printf %s\n x"),
    ],
)
def test_words_become_the_line_heroku_run_would_send(words: list[str], line: str) -> None:
    assert build_command(words) == line


def test_run_sends_the_quoted_line_to_the_daemon(run_api: FakeApi) -> None:
    result = run_api.cli(
        "run", "--app", "sushi", "--detach", "--", "sh", "-c", "exec python3 server.py"
    )
    assert result.exit_code == 1  # the fake daemon refuses every run after recording it
    (request,) = [call[1] for call in run_api.daemon.calls if call[0] == "run_dyno"]
    assert request.command == 'sh -c "exec python3 server.py"'
