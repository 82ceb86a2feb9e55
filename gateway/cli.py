"""This part's `mesh` sub-commands (wired in by node/cli.py)."""

from __future__ import annotations

from mesh.cli import SubParsers


def register(commands: SubParsers, benches: SubParsers) -> None:
    """Add this part's commands to `commands` and its benchmark to `benches`
    (`mesh bench <name>`); each parser sets `fn=async (args, cfg) -> int`."""
