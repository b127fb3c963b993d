"""A .env file read as foreman / `heroku local` read it; a bad line names its number."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.rules.dotenv import parse


def test_the_forms_foreman_reads() -> None:
    text = (
        "# a comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED=1\n"
        "SPACED = around \n"
        "TRAILING=x # a comment\n"
        "SINGLE='a \\n b # not a comment'\n"
        'DOUBLE="line1\\nline2 \\"quoted\\" \\\\"\n'
        "EMPTY=\n"
        "URL=postgres://u:p@h/db?x=1\n"
        "PLAIN=last wins\n"
    )
    assert parse(text) == {
        "PLAIN": "last wins",
        "EXPORTED": "1",
        "SPACED": "around",
        "TRAILING": "x",
        "SINGLE": "a \\n b # not a comment",
        "DOUBLE": 'line1\nline2 "quoted" \\',
        "EMPTY": "",
        "URL": "postgres://u:p@h/db?x=1",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("no assignment here", "is not NAME=VALUE"),
        ("1BAD=x", "invalid name '1BAD'"),
        ("BAD-NAME=x", "invalid name 'BAD-NAME'"),
        ("OPEN='x", "unclosed ' quote"),
        ('OPEN="x', 'unclosed " quote'),
        ('AFTER="x" y', "text after the closing quote"),
    ],
)
def test_a_bad_line_is_an_error_with_its_number(line: str, problem: str) -> None:
    with pytest.raises(DynodError) as err:
        parse(f"OK=1\n# fine\n{line}\n", "/app/.env")
    assert err.value.problem.startswith("/app/.env, line 3: ")
    assert problem in err.value.problem
