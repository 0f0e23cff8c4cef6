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


@app.command("serve-teacher")
def serve_teacher(
    model: str = typer.Option(..., help="Hugging Face causal LM directory (or hub id) to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str = typer.Option(
        None, envvar="OPDKIT_SERVE_API_KEY", help="Require 'Authorization: Bearer KEY' on every request."
    ),
    max_batch_tokens: int = typer.Option(
        8192, help="Padded tokens per forward pass; also the longest prompt."
    ),
    max_model_len: int = typer.Option(None, help="Longest sequence (default: the model's max positions)."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
) -> None:
    """Serve a causal LM as an OpenAI/vLLM-compatible teacher: prompt log-probs of token-id prompts."""
    from opdkit.serve import ServeConfig, serve

    serve(
        ServeConfig(
            model,
            host,
            port,
            api_key,
            max_batch_tokens,
            max_model_len=max_model_len,
            device=device,
            dtype=dtype,
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
