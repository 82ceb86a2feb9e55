"""The composition root: the `mesh` command with every part's sub-commands.

`mesh/` knows nothing of the parts built on it; each part (`gateway`, `store`,
`bridge_kafka`) exposes `register(subparsers)` in its own `cli.py`, and only this module
puts them together.
"""

from __future__ import annotations

from bridge_kafka import cli as bridge_cli
from gateway import cli as gateway_cli
from mesh import cli as mesh_cli
from store import cli as store_cli

PARTS = (gateway_cli, store_cli, bridge_cli)


def main(argv: list[str] | None = None) -> None:
    parser = mesh_cli.parser()
    commands, benches = mesh_cli.subcommands(parser)
    for part in PARTS:
        part.register(commands, benches)
    mesh_cli.run(parser, argv)


if __name__ == "__main__":
    main()
