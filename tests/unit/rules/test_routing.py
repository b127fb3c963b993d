"""The internal-routing rule, checked by one function for the CLI and the daemon alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dynod.errors import DynodError
from dynod.rules import names

ROOT = Path(__file__).resolve().parents[3] / "dynod"


def test_internal_routing_needs_a_space() -> None:
    with pytest.raises(DynodError) as err:
        names.check_routing(None, True)
    assert err.value.problem == "internal routing exists only in Private Spaces"
    assert "--space SPACE" in err.value.fix and err.value.status == 400
    with pytest.raises(DynodError):
        names.check_routing("", True)  # the Common Runtime, as the state stores it


def test_external_routing_is_anywhere_and_internal_in_a_space() -> None:
    names.check_routing(None, False)
    names.check_routing("acme", False)
    names.check_routing("acme", True)


def duplicated_constants() -> dict[str, list[str]]:
    """Module-level CONSTANTS of dynod/ defined in more than one module with the same value."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id.isupper():
                    key = (target.id, ast.dump(node.value))
                    found.setdefault(key, []).append(str(path.relative_to(ROOT)))
    return {name: paths for (name, _), paths in found.items() if len(paths) > 1}


def test_each_constant_has_one_definition() -> None:
    assert duplicated_constants() == {}
