"""The ``opdkit`` command line (Typer). Each subcommand imports what it needs when it runs."""

from __future__ import annotations

import typer

import opdkit

app = typer.Typer(
    name="opdkit",
    help="On-policy distillation and self-distillation for post-training language models.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the opdkit version."""
    typer.echo(opdkit.__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
