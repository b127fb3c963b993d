"""The tutorial's block format and its output matching: a wrong line is caught."""

from __future__ import annotations

import pytest

from tests.integration.tutorial import mismatch, parse

DOC = """Intro

<!-- run -->
```sh
echo one
```

<!-- expect -->
```text
o...e
```

<!-- run -->
```sh
true
```
"""


def test_blocks_and_their_expectations_are_read_in_order() -> None:
    steps = parse(DOC).steps
    assert [s.script for s in steps] == ["echo one", "true"]
    assert steps[0].expected == ["o...e"] and steps[1].expected is None


def test_expected_lines_match_in_order_with_wildcards() -> None:
    assert mismatch(["a ... c", "end"], "x\na b c\nmiddle\nend\n") is None
    assert mismatch(["end", "a ... c"], "a b c\nend\n") == "no line matched 'a ... c'"
    assert mismatch(["1 received"], "0 received") is not None


def test_an_empty_expectation_means_no_output() -> None:
    assert mismatch([], "") is None
    assert mismatch([], "veth0: something\n") is not None


def test_an_expect_without_a_run_is_refused() -> None:
    with pytest.raises(ValueError):
        parse("<!-- expect -->\n```text\nx\n```\n")


DAEMON_DOC = """<!-- daemon -->
```sh
dynod daemon --router-port 5000
```

<!-- run -->
```sh
dynod status
```
"""


def test_a_daemon_block_is_a_step_of_its_own() -> None:
    steps = parse(DAEMON_DOC).steps
    assert [(s.script, s.daemon) for s in steps] == [
        ("dynod daemon --router-port 5000", True),
        ("dynod status", False),
    ]


@pytest.mark.parametrize(
    "script", ["dynod daemon; rm -rf /tmp/x", "sudo dynod daemon", "dynod daemon &\nsleep 1"]
)
def test_a_daemon_block_is_one_dynod_daemon_command(script: str) -> None:
    with pytest.raises(ValueError, match="one `dynod daemon` command"):
        parse(f"<!-- daemon -->\n```sh\n{script}\n```\n")


def test_a_daemon_block_has_no_expectation() -> None:
    with pytest.raises(ValueError):
        parse(DAEMON_DOC.split("<!-- run -->")[0] + "<!-- expect -->\n```text\nx\n```\n")
