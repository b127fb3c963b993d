"""The command line. Commands beyond cli/main.py's live in modules of their own that add them to
its `main` group; importing them here (not from main.py) registers them without an import cycle."""

from dynod.cli import config  # noqa: F401
