"""Config values come back as stored (escape sequences too), and a value no environment can
hold is refused as bad input without the value (found by an adversarial review)."""

from __future__ import annotations

import json

import pytest

from dynod.errors import DynodError
from dynod.rules.configvars import check_changes, size
from tests.unit.fake_daemon import FakeApi, ok

ESCAPED = "a\x1b[31mRED\x1b[0mb"


def test_config_get_prints_a_value_with_an_escape_sequence_as_it_is(api: FakeApi) -> None:
    """`dynod config:get X > file` and `eval "$(dynod config --shell)"` must give the stored
    bytes; click.echo strips ANSI sequences when stdout is not a terminal, so they do not."""
    ok(api.cli("apps:create", "sushi"))
    ok(api.cli("config:set", "--app", "sushi", f"ESC={ESCAPED}"))
    stored = json.loads(api.cli("config", "--app", "sushi", "--json").stdout)
    assert stored == {"ESC": ESCAPED}
    assert api.cli("config:get", "--app", "sushi", "ESC").stdout == ESCAPED + "\n"
    assert api.cli("config", "--app", "sushi", "--shell").stdout == f"ESC='{ESCAPED}'\n"


def test_a_lone_surrogate_is_refused_as_bad_input_without_the_value() -> None:
    """JSON allows "\\ud800"; it cannot become an environment string. It was a 500 with the
    value in the error and in the daemon's log; it is refused before anything is stored."""
    with pytest.raises(DynodError) as refused:
        check_changes({"PW": "secret-pw-123\ud800"})
    assert refused.value.status == 400
    assert "secret" not in f"{refused.value.problem} {refused.value.fix}"


def test_the_size_limit_counts_bytes() -> None:
    assert size({"SNOW": "\u2603" * 10}) == 4 + 30
