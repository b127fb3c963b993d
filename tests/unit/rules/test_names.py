"""The Heroku model's names (dynod/rules/names.py): apps, process types, dynos, Procfiles, spaces,
ranges, NAT addresses and upstream resolvers. No root needed."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.rules import names


@pytest.mark.parametrize("good", ["sushi", "abc", "my-app-2", "a" + "b" * 28 + "c"])
def test_app_names_heroku_accepts(good: str) -> None:
    assert names.check_app(good) == good


@pytest.mark.parametrize("bad", ["", "ab", "Sushi", "1app", "app-", "a_b", "a" * 31, "sushi.x"])
def test_app_names_heroku_refuses(bad: str) -> None:
    with pytest.raises(DynodError) as err:
        names.check_app(bad)
    assert "invalid app name" in err.value.problem and err.value.fix


@pytest.mark.parametrize("bad", ["", "web.1", "a b", "x" * 129, "release"])
def test_process_types_refused(bad: str) -> None:
    with pytest.raises(DynodError):
        names.check_process_type(bad)


def test_process_types_accepted() -> None:
    for good in ("web", "worker", "clock_2", "Web-X", "x" * 128):
        assert names.check_process_type(good) == good


def test_dyno_names_and_numbers() -> None:
    assert names.parse_dyno_name("web.1") == ("web", 1)
    assert names.parse_dyno_name("my_worker.12") == ("my_worker", 12)
    for bad in ("web", "web.0", "web.x", ".1", "web.01"):
        with pytest.raises(DynodError):
            names.parse_dyno_name(bad)
    assert names.lowest_free_number(set()) == 1
    assert names.lowest_free_number({1, 2, 4}) == 3


def test_procfile_parsing() -> None:
    text = "# comment\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n\nworker:python w.py\nbad line\n"
    assert names.parse_procfile(text) == {
        "web": "gunicorn app:app --bind 0.0.0.0:$PORT",
        "worker": "python w.py",
    }
