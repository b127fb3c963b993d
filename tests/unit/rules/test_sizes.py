"""Dyno sizes without root (dynod/rules/sizes.py): the table, parsing, choosing, log lines and the
memory cell of `dynod ps`."""

from __future__ import annotations

import pytest

from dynod.errors import DynodError
from dynod.rules import sizes
from netns import cgroup

MB = 1024 * 1024


# ---------------------------------------------------------------- the table
@pytest.mark.parametrize(
    ("name", "quota", "hard", "tasks", "weight"),
    [
        ("eco", 512, 1024, 256, 100),
        ("basic", 512, 1024, 256, 100),
        ("standard-1x", 512, 1024, 256, 100),
        ("standard-2x", 1024, 2048, 512, 200),
        ("performance-m", 2560, 5120, 16384, 1200),
        ("performance-l", 14336, 28672, 32768, 5000),
        ("performance-l-ram", 30720, 36864, 16384, 2400),
        ("performance-xl", 63488, 76185, 32768, 5000),
        ("performance-2xl", 129024, 154828, 65536, 10000),
        ("private-s", 1024, 1024, 512, 1200),
        ("private-m", 2560, 2560, 16384, 1200),
        ("shield-l", 14336, 14336, 32768, 5000),
        ("private-2xl", 129024, 129024, 65536, 10000),
    ],
)
def test_heroku_table(name: str, quota: int, hard: int, tasks: int, weight: int) -> None:
    size = sizes.SIZES[name]
    assert (size.quota_mb, size.hard_mb, size.tasks, size.cpu_weight) == (
        quota,
        hard,
        tasks,
        weight,
    )
    assert size.limits == cgroup.Limits(hard * MB, tasks, weight)
    assert size.tmpfs_bytes == quota * MB


def test_hard_limits_match_herokus_rounded_figures() -> None:
    # "Dyno Memory Behavior": 36 GB, 74 GB and 151 GB for the 1.2-times sizes
    for name, gb in (("performance-l-ram", 36), ("performance-xl", 74), ("performance-2xl", 151)):
        assert round(sizes.SIZES[name].hard_mb / 1024) == gb


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("standard-1x", "standard-1x"),
        ("Standard-2X", "standard-2x"),
        (" performance-m ", "performance-m"),
        ("1X", "standard-1x"),
        ("2x", "standard-2x"),
        ("hobby", "basic"),
        ("free", "eco"),
    ],
)
def test_parse(given: str, expected: str) -> None:
    assert sizes.parse(given).name == expected


@pytest.mark.parametrize("given", ["huge", "standard-3x", "", "  ", 2, None, ["eco"]])
def test_parse_refuses(given: object) -> None:
    with pytest.raises(DynodError) as caught:
        sizes.parse(given)
    assert caught.value.fix


def test_choose() -> None:
    assert sizes.choose(None, None) == sizes.DEFAULT == "standard-1x"
    assert sizes.choose("", None) == "standard-1x"
    assert sizes.choose("Performance-M", None) == "performance-m"
    assert sizes.choose(None, "no memory controller") == ""  # runs, without limits
    with pytest.raises(DynodError) as caught:
        sizes.choose("eco", "no memory controller")
    assert "no memory controller" in str(caught.value)
    with pytest.raises(DynodError):
        sizes.choose("nope", None)


def test_log_lines() -> None:
    size = sizes.SIZES["standard-1x"]
    assert sizes.running_line(size, 666 * MB) == "Process running mem=666M(130.1%)"
    assert sizes.running_line(size, 1024 * MB) == "Process running mem=1024M(200.0%)"
    assert sizes.running_line(sizes.SIZES["standard-2x"], 512 * MB + 1) == (
        "Process running mem=512M(50.0%)"
    )
    assert sizes.R14 == "Error R14 (Memory quota exceeded)"
    assert sizes.R15 == "Error R15 (Memory quota vastly exceeded)"


def test_ps_memory_cell() -> None:
    from dynod.cli.main import _memory

    assert _memory({"memory_mb": 123.7, "memory_quota_mb": 512}) == "123M/512M"
    assert _memory({"memory_mb": None, "memory_quota_mb": None}) == "-"
    assert _memory({}) == "-"  # a daemon from before sizes
