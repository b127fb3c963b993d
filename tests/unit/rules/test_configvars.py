"""Config var names and `config:set`'s NAME=VALUE words (dynod/rules/configvars.py)."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.rules.configvars import check_changes, check_name, parse_assignments


def test_values_keep_equals_signs_and_newlines() -> None:
    words = ["A=1", "URL=postgres://u:p@h/db?x=y", "PEM=line1\nline2", "EMPTY="]
    assert parse_assignments(words) == {
        "A": "1",
        "URL": "postgres://u:p@h/db?x=y",
        "PEM": "line1\nline2",
        "EMPTY": "",
    }


@pytest.mark.parametrize("name", ["A", "_X", "DATABASE_URL", "a1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "1A", "MY-VAR", "A B", "A.B", "É"])
def test_bad_names_are_refused_with_a_fix(name: str) -> None:
    with pytest.raises(DynodError, match="invalid config var name") as raised:
        check_name(name)
    assert "underscores" in raised.value.fix


@pytest.mark.parametrize(("words", "problem"), [([], "no config vars"), (["A"], "not NAME=VALUE")])
def test_bad_words_are_refused(words: list[str], problem: str) -> None:
    with pytest.raises(DynodError, match=problem):
        parse_assignments(words)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, "no config vars given"),
        ({"A": "1", "PORT": "80"}, "PORT is set by the platform"),
        ({"DYNO": None}, "DYNO is set by the platform"),
        ({"HEROKU_DNS_APP_NAME": "x"}, "set by the platform"),
        ({"A-B": "1"}, "invalid config var name"),
        ({"A": "sec\0ret"}, "the value of A holds a NUL byte"),
    ],
)
def test_refused_changes_name_the_var_not_its_value(
    changes: dict[str, str | None], problem: str
) -> None:
    with pytest.raises(DynodError, match=problem) as raised:
        check_changes(changes)
    assert "sec" not in raised.value.problem and raised.value.fix


def test_a_change_may_set_and_unset() -> None:
    check_changes({"A": "x=y\nz", "B": None, "HEROKU_APP_NAME": "ok"})
