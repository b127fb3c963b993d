"""`dynod inspect` over the real API server, with a stand-in for the daemon's inspect service
that answers with the sample model: each format, an image through a `dot` on PATH or, without
one, the DOT text and an error that says how to get the image; bad input."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from dynod.errors import NotFound
from tests.unit.fake_daemon import FakeApi, ok, refused
from tests.unit.inspect.sample import topology


class _Inspect:
    def __init__(self) -> None:
        self.asked: list[tuple[str | None, str | None]] = []

    async def inspect(self, app: str | None, space: str | None) -> dict[str, Any]:
        self.asked.append((app, space))
        if app == "nope":
            raise NotFound("no app named 'nope'", "`dynod apps` lists the apps")
        return topology().to_json()


@pytest.fixture
def inspecting(api: FakeApi) -> tuple[FakeApi, _Inspect]:
    service = _Inspect()
    api.server.endpoints.inspect = service  # type: ignore[attr-defined]
    return api, service


def test_text_is_the_default(inspecting: tuple[FakeApi, _Inspect]) -> None:
    api, service = inspecting
    out = "\n".join(ok(api.cli("inspect")))
    assert "┌── bridge dynods1 #5 (space acme, 10.1.0.0/16, NAT 192.0.2.10)" in out
    assert "2 difference(s) between the state and the kernel:" in out
    assert service.asked == [(None, None)]


def test_app_and_space_are_sent(inspecting: tuple[FakeApi, _Inspect]) -> None:
    api, service = inspecting
    ok(api.cli("inspect", "--app", "sushi", "--format", "json"))
    ok(api.cli("inspect", "--space", "acme", "--format", "dot"))
    assert service.asked == [("sushi", None), (None, "acme")]


def test_html_goes_to_the_output_file(inspecting: tuple[FakeApi, _Inspect], tmp_path: Path) -> None:
    api, _ = inspecting
    target = tmp_path / "net.html"
    result = api.cli("inspect", "--format", "html", "-o", str(target))
    assert result.exit_code == 0, result.stderr
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert f"wrote {target}" in result.stderr


def test_an_image_is_made_by_dot(
    inspecting: tuple[FakeApi, _Inspect], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = inspecting
    fake = tmp_path / "dot"
    fake.write_text(
        '#!/bin/sh\ngrep -c "^  subgraph" | sed "s/^/<svg>$1 clusters=/; s/$/<\\/svg>/"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    result = api.cli("inspect", "--format", "svg")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "<svg>-Tsvg clusters=2</svg>"


def test_without_graphviz_the_dot_text_is_printed_and_the_error_says_why(
    inspecting: tuple[FakeApi, _Inspect], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = inspecting
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot here
    result = api.cli("inspect", "--format", "png")
    assert result.exit_code == 1
    assert result.stdout.startswith('graph "dynod dynod" {')
    assert "error: graphviz's `dot` is not installed, so no png was made" in result.stderr
    assert "fix: apt-get install graphviz" in result.stderr


def test_dot_format_needs_no_graphviz(
    inspecting: tuple[FakeApi, _Inspect], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = inspecting
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ok(api.cli("inspect", "--format", "dot"))[0] == 'graph "dynod dynod" {'


def test_bad_input_is_refused(inspecting: tuple[FakeApi, _Inspect]) -> None:
    api, service = inspecting
    refused(api.cli("inspect", "--app", "nope"), "no app named 'nope'")
    refused(api.cli("inspect", "--app", "a", "--space", "b"), "--app and --space both given")
    refused(api.cli("inspect", "--app", "Bad_Name"), "invalid app name 'Bad_Name'")
    refused(api.cli("inspect", "--app", ""), "invalid app name ''")
    assert service.asked == [("nope", None)]


def test_an_unwritable_output_is_refused(
    inspecting: tuple[FakeApi, _Inspect], tmp_path: Path
) -> None:
    api, _ = inspecting
    target = tmp_path / "no-such-dir" / "net.html"
    refused(api.cli("inspect", "--format", "html", "-o", str(target)), f"cannot write {target}")
    assert not target.parent.exists()
