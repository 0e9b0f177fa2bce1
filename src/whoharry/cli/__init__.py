"""The `whoharry` command line: thin shims over the stage functions and the tools.

`common` declares what the commands share (the stage options once, the error handling); `stages` holds
the stage commands, `tools` the anchors, compare and experiment commands.
"""

from __future__ import annotations

from typing import Annotated

import typer

from whoharry import __version__
from whoharry.cli import stages, tools

app = typer.Typer(
    name="whoharry",
    help="Make a causal language model approximately forget a body of text "
    "(Who's Harry Potter?, Eldan & Russinovich 2023).",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

stages.register(app)
tools.register(app)


def version_callback(value: bool) -> None:
    """`--version`: print it and stop."""
    if value:
        typer.echo(f"whoharry {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Make a causal language model approximately forget a body of text."""


def main() -> None:
    """The `whoharry` console script."""
    app()
