"""Root tests run against the real kernel; elsewhere they are skipped, with how to run them.

In CI (CI=true) they must run: a CI that is not root fails instead of skipping them. Root tests
live in tests/integration/, the others in tests/unit/: a test in the wrong folder stops the run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests import support

ROOT_REASON = (
    "needs root and a real kernel (network namespaces, bridges, nftables): "
    "run `sudo .venv/bin/pytest` or `sudo bash .ci/run`"
)


# Another root process (a second test run, a benchmark) may make kernel objects while this suite
# runs; with DYNOD_TESTS_SHARED=1 the leak check looks only at names with this run's prefixes.
# CI runs alone and checks everything.
SHARED = os.environ.get("DYNOD_TESTS_SHARED") == "1"


def _ours(found: list[object]) -> list[object]:
    return [
        item
        for item in found
        if any(p in str(item) for p in support.MADE_PREFIXES)  # "inet tstabc", "tstabc-1", ...
    ]


TESTS = Path(__file__).parent
INTEGRATION = TESTS / "integration"

# Started in the background by a non-interactive shell (`bash .ci/run &`, nohup), this process
# ignores SIGINT, and the CLIs the tests start would inherit that: Ctrl-C (or SIGINT) would not
# reach them as it does a user's. A handler (unlike SIG_IGN) is reset to the default by exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def misplaced(items: list[pytest.Item]) -> list[str]:
    """Root tests live in tests/integration/ and only there, so that tests/unit/ runs anywhere.
    (The examples' tests, outside tests/, mark themselves: they are skipped like root tests.)"""
    return [
        item.nodeid
        for item in items
        if TESTS in item.path.parents
        and (INTEGRATION in item.path.parents) != (item.get_closest_marker("root") is not None)
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = misplaced(items)
    if wrong:
        raise pytest.UsageError(
            f"{wrong[0]} is in the wrong folder ({len(wrong)} tests in all): "
            "move root-marked tests (pytestmark = pytest.mark.root) to tests/integration/ "
            "and tests without the mark to tests/unit/"
        )
    if os.geteuid() == 0:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI must run the root tests: {ROOT_REASON}")
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def kernel_unchanged() -> object:
    """After the whole suite, netns, links, nftables tables and daemons' mount templates look as
    they did before, and no process lives in a network namespace that was not there before (a
    leaked dyno would)."""
    if os.geteuid() != 0:
        yield None
        return
    before = (
        support.netns_names(),
        support.link_names(),
        support.nft_tables(),
        support.run_mounts(),
        support.process_netns(),
        support.lock_files(),
        support.run_dir_mounts(),
    )
    yield None
    deadline = time.monotonic() + 10  # the kernel destroys a deleted namespace's veth lazily
    while True:
        after = (
            support.netns_names(),
            support.link_names(),
            support.nft_tables(),
            support.run_mounts(),
            support.process_netns(),
            support.lock_files(),
            support.run_dir_mounts(),
        )
        added = [sorted(b - a) for a, b in zip(before, after, strict=True)]
        if SHARED:
            added = [_ours(found) for found in added[:4]]  # processes and locks: not attributable
        if not any(added) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(added), f"the suite left kernel objects behind: {added}"
