"""The command line: `main` (cli/main.py) and the commands other modules define on it.

A module of commands is registered here, not at the bottom of cli/main.py, so that the import
graph has no cycle (tests/unit/test_imports.py): it imports cli/main.py, never the reverse."""

from dynod.cli import formation  # noqa: F401  (ps, ps:scale, ps:restart, ps:stop, ps:wait)
