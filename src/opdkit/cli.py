"""The ``opdkit`` command line (Typer). Each subcommand imports what it needs when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@app.command("verl-config")
def verl_config(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="opdkit run config (YAML)")],
) -> None:
    """Print the `python -m verl.trainer.main_ppo` command (Hydra overrides) that runs CONFIG on verl."""
    import yaml

    from opdkit.integrations.verl.config_gen import ConfigError, verl_command

    try:
        command = verl_command(yaml.safe_load(config.read_text()) or {})
    except (ConfigError, yaml.YAMLError) as exc:
        typer.echo(f"{config}: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(command.render())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
