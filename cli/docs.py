"""Render the CLI reference (docs/cli.md) from the commands' own --help text.

    python -m qffs.cli.docs > docs/cli.md

A test compares docs/cli.md with this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import typer

from qffs.cli import commands  # noqa: F401  (registers the commands)
from qffs.cli.app import app

WIDTH = 100


def _help(command, name: str, parent=None) -> str:
    ctx = command.make_context(name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH,
                               max_content_width=WIDTH)
    return command.get_help(ctx)


def render() -> str:
    root = typer.main.get_command(app)
    parts = ["# Command-line reference", "",
             "Generated from the commands' own `--help` by `python -m qffs.cli.docs > docs/cli.md`; "
             "a test keeps it in step with the code.", "", "## qffs", "", "```", _help(root, "qffs"), "```", ""]
    root_ctx = root.make_context("qffs", [], resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH)
    for name in root.list_commands(root_ctx):
        sub = root.get_command(root_ctx, name)
        parts += [f"## qffs {name}", "", "```", _help(sub, name, parent=root_ctx), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
