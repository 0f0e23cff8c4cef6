"""The ``opdkit`` command line (Typer). Each subcommand imports what it needs when it runs.

opdkit train CONFIG.yaml [section.key=value ...] [--output DIR] [--resume | --overwrite]
opdkit eval --model PATH --data FILE_OR_BENCHMARK_OR_task --k N
opdkit plot RUN_DIR [RUN_DIR ...] [--out DIR]
opdkit demo [--quick] [--output DIR] [--workers N]
opdkit compare CONFIG CONFIG ... [--seeds 0,1,2] [--set key=value ...] [--output DIR] | --runs DIR
opdkit methods
opdkit presets [--markdown]
opdkit serve-teacher --model PATH [--port 8000] [--api-key KEY]
opdkit verl-config CONFIG.yaml [section.key=value ...]   (the verl launch command; docs/verl.md)
opdkit plan CONFIG.yaml [section.key=value ...] [--memory-gb 80]   (memory per device, from the model config)
"""

from __future__ import annotations

from enum import IntEnum

import typer

import opdkit


class ExitCode(IntEnum):
    """What ``opdkit`` exits with; a script can rely on these (README "Exit codes")."""

    COMPLETED = 0  # the command did what it was asked (a training run reached its last step)
    FAILED = 1  # it crashed: an unexpected error (Python's own exit status for an uncaught exception)
    REFUSED = 2  # bad input refused before any work was lost: config, arguments, data, run directory
    STOPPED = 3  # a training run stopped early on purpose (e.g. teacher failures); its checkpoint is saved


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


def _fail(message: str) -> None:
    line = " ".join(str(message).split()) or "invalid input"  # one line, whatever the message holds
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(ExitCode.REFUSED)


def _in_unit_interval(value: float) -> float:
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise typer.BadParameter(f"{value} is not in the range 0<x<=1.")
    return value


def _resolve_config_path(config: str) -> str:
    """A path, or the name of a packaged preset (``tiny/scope``, ``paper/sc_sdpo``)."""
    from opdkit.train.config import ConfigError, resolve_preset

    try:
        return resolve_preset(config)
    except ConfigError as exc:
        _fail(str(exc))
    return config


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: str = typer.Argument(..., help="YAML config file or packaged preset name (e.g. tiny/scope)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: section.key=value (YAML values)."),
    output: str = typer.Option(None, "--output", "-o", help="Run directory (default: runs/<method>)."),
    resume: bool = typer.Option(False, help="Continue the run from its newest complete checkpoint."),
    overwrite: bool = typer.Option(False, help="Delete an existing run directory first."),
    help_config: bool = typer.Option(False, "--help-config", help="List every config key and exit."),
) -> None:
    """Train a student with one method; writes config.yaml, metrics.jsonl, eval/ and checkpoints/."""
    from opdkit.train import ConfigError, load_config
    from opdkit.train.config import TrainConfig
    from opdkit.train.configio import describe

    if help_config:
        typer.echo("\n".join(describe(TrainConfig)))
        return
    try:
        cfg = load_config(config, overrides or [])  # a YAML path or a preset name (resolve_preset)
    except (ConfigError, KeyError) as exc:
        _fail(str(exc))
    from opdkit.train import train as run_train
    from opdkit.train.progress import StepProgress
    from opdkit.train.rundir import RunDirError

    out = output or f"runs/{cfg.method.name}"
    try:
        with StepProgress(cfg.steps, title=f"{cfg.method.name} -> {out}") as progress:
            result = run_train(cfg, out, resume=resume, overwrite=overwrite, progress=progress.update)
    except (RunDirError, ValueError, KeyError, FileNotFoundError, ConnectionError) as exc:
        _fail(str(exc))
    typer.echo(f"{result.status} at step {result.last_step}; run directory: {result.run_dir}")
    if result.status != "completed":  # any early stop (teacher failures, weight health, ...)
        raise typer.Exit(ExitCode.STOPPED)


@app.command("eval")
def eval_command(
    model: str = typer.Option(
        ..., help="Model directory (Hugging Face format) or a run's checkpoint model/."
    ),
    data: str = typer.Option(
        ...,
        help="A benchmark name (math500, sciknoweval/chemistry:test, ...), a file, "
        "or 'task' (the synthetic task).",
    ),
    k: int = typer.Option(16, min=1, help="Samples per problem."),
    temperature: float = typer.Option(0.6, min=0.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(0.95, callback=_in_unit_interval, help="Nucleus threshold in (0, 1]."),
    max_new_tokens: int = typer.Option(2048, min=1, help="Response limit."),
    limit: int = typer.Option(0, min=0, help="Evaluate the first N problems only (0 = all)."),
    output: str = typer.Option("eval_out", "--output", "-o", help="Where samples.jsonl and summary.json go."),
    task: str = typer.Option("addition", help="With --data task: the synthetic task."),
    seed: int = typer.Option(0, min=0, max=2**63 - 1, help="Sampling seed."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    dtype: str = typer.Option("float32", help="Weights dtype: float32, bfloat16 or float16."),
    chat_template_kwargs: str = typer.Option(
        None,
        "--chat-template-kwargs",
        help="Chat-template arguments as a YAML/JSON mapping, e.g. '{enable_thinking: false}' for Qwen3 "
        "(use the training run's model.chat_template_kwargs).",
    ),
    batch_size: int = typer.Option(16, help="Prompts per batch (each batch samples from its own seed)."),
    kv_cache_tokens: int = typer.Option(
        0,
        help="Key/value cache budget in tokens; a batch runs in chunks under it (0 = half the free memory).",
    ),
) -> None:
    """Evaluate a model: mean@k, unbiased pass@k, exact maj@k and bootstrap variants per data source."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdkit.eval import EvalSettings, TaskSource, evaluate, resolve_examples, write_eval
    from opdkit.train.config import ModelConfig, TaskConfig
    from opdkit.train.configio import check_field, field_of
    from opdkit.train.preflight import check_model_dir

    torch.set_num_threads(1)
    chat_kwargs = _chat_kwargs(chat_template_kwargs)
    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    if batch_size < 1 or kv_cache_tokens < 0:
        _fail(f"--batch-size must be >= 1 and --kv-cache-tokens >= 0, got {batch_size} and {kv_cache_tokens}")
    try:
        check_field(field_of(ModelConfig, "device"), device, "--device")
        check_field(field_of(TaskConfig, "name"), task, "--task")
        examples = resolve_examples(data, "eval", TaskSource(name=task))
        check_model_dir("--model", model)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(str(exc))
    examples = examples[:limit] if limit else examples
    dev = (
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    net = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(dev)
    tok = AutoTokenizer.from_pretrained(model)
    from opdkit.rollout.budget import cache_token_budget

    budget = cache_token_budget(net, kv_cache_tokens, getattr(torch, dtype))
    settings = EvalSettings(
        k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
        prompts_per_batch=batch_size, max_cache_tokens=budget,
    )  # fmt: skip
    result = evaluate(net, tok, examples, settings, chat_kwargs=chat_kwargs)
    write_eval(result, output, "samples")
    typer.echo(json.dumps(result.summary["average"], indent=2))


def _chat_kwargs(text: str | None) -> dict:
    """``--chat-template-kwargs``: a YAML/JSON mapping (None = no extra arguments)."""
    import yaml

    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        _fail(f"--chat-template-kwargs is not YAML/JSON: {exc}")
    if not isinstance(value, dict):
        _fail(f"--chat-template-kwargs must be a mapping such as '{{enable_thinking: false}}', got {text!r}")
    return value


@app.command()
def plot(
    run_dirs: list[str] = typer.Argument(..., help="One or more run directories (overlaid)."),
    out: str = typer.Option(None, help="Where the PNGs go (default: the first run's plots/)."),
) -> None:
    """PNG curves from metrics.jsonl: pass rate, reward, loss, weight statistics, held-out evaluation."""
    from pathlib import Path

    from opdkit.eval.plots import plot_runs

    try:
        written = plot_runs(run_dirs, out or Path(run_dirs[0]) / "plots")
    except FileNotFoundError as exc:
        _fail(str(exc))
    for path in written:
        typer.echo(str(path))


@app.command()
def demo(
    quick: bool = typer.Option(False, help="About 1.5 minutes: 2 seeds, 20 steps, a smaller evaluation."),
    output: str = typer.Option("runs/demo", "--output", "-o", help="Where the runs, plots and table go."),
    workers: int = typer.Option(None, help="Runs at once (default: the number of cores, at most 4)."),
) -> None:
    """Warm-start a tiny teacher and student, train opd vs scope and sdpo vs sc_sdpo (3 seeds), compare."""
    from opdkit.recipes.demo import DemoPlan, run_demo

    result = run_demo(output, DemoPlan.standard(quick=quick, workers=workers), log=typer.echo)
    typer.echo("")
    typer.echo(result.table)
    typer.echo(f"\nwall time {result.seconds:.0f} s; runs, plots and summary.md under {result.out_dir}")


@app.command()
def compare(
    configs: list[str] = typer.Argument(
        None, help="Presets or YAML files, one arm each; the first is the baseline."
    ),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds, the same for every arm."),
    set_: list[str] = typer.Option(None, "--set", help="Override for every arm (repeatable), e.g. steps=20."),
    output: str = typer.Option("runs/compare", "--output", "-o", help="Where the run directories go."),
    runs: str = typer.Option(None, help="Read the finished <arm>-seed<s> runs in DIR; train nothing."),
    metric: str = typer.Option("eval/mean@4", help="The metric compared, at the final evaluation."),
    confidence: float = typer.Option(0.95, help="Level of the bootstrap interval and of the test."),
    workers: int = typer.Option(None, help="Runs at once (default: the number of cores, at most 4)."),
) -> None:
    """Methods × seeds with the same budget, paired by seed: differences, bootstrap intervals, verdicts."""
    import os

    from opdkit.recipes import compare as cmp

    try:
        if runs:
            labels = [a.label for a in cmp.arms_of(configs)] if configs else None
            arms, out = cmp.read_arms(runs, metric, labels), runs
        else:
            if not configs or len(configs) < 2:
                _fail("give at least two configs (or --runs DIR)")
            plan = cmp.ComparePlan(
                arms=tuple(cmp.arms_of(configs)),
                seeds=tuple(int(s) for s in seeds.split(",")),
                overrides=tuple(set_ or ()),
                workers=workers or max(1, min(4, os.cpu_count() or 1)),
            )
            cmp.run_arms(plan, output, log=typer.echo)
            arms, out = cmp.read_arms(output, metric, [a.label for a in plan.arms]), output
        report = cmp.write_report(out, cmp.compare_arms(arms, confidence), metric)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(report)


@app.command()
def methods() -> None:
    """List the registered methods with one line each."""
    from opdkit.train.methods import METHODS

    for name in METHODS.names():
        typer.echo(f"{name:18s} {METHODS.get(name).description}")


@app.command()
def presets(
    markdown: bool = typer.Option(False, help="Print the README's reproduction table instead."),
) -> None:
    """List the packaged presets: for the papers' ones, the table row each reproduces and its numbers."""
    from opdkit.train.config import preset_names
    from opdkit.train.presets import all_presets, reproduction_table

    if markdown:
        typer.echo(reproduction_table(), nl=False)
        return
    described = {p.name: p for p in all_presets()}
    for name in preset_names():
        typer.echo(name)
        if name in described:
            typer.echo(f"    {described[name].paper_row}\n    reports: {described[name].reported}")
        elif name.startswith("tiny/"):
            typer.echo("    CPU setting of the demo (tiny warm-started model, synthetic task)")


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
    max_body_bytes: int = typer.Option(8 * 1024 * 1024, min=1, help="Largest request body (413 beyond)."),
    max_response_logprobs: int = typer.Option(
        500_000, min=1, help="Most log-prob entries in one response (413 beyond)."
    ),
    max_concurrent_requests: int = typer.Option(
        64, min=1, help="Requests in flight at once (429 with Retry-After beyond)."
    ),
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
            max_body_bytes=max_body_bytes,
            max_response_logprobs=max_response_logprobs,
            max_concurrent_requests=max_concurrent_requests,
        )
    )


@app.command()
def plan(
    config: str = typer.Argument(..., help="YAML config file or packaged preset name (e.g. paper/sc_sdpo)."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: section.key=value."),
    memory_gb: float = typer.Option(80.0, "--memory-gb", help="Memory of one device, in GB (1e9 bytes)."),
    model_config: str = typer.Option(
        None, "--model-config", help="The student's config.json (default: model.student's directory)."
    ),
) -> None:
    """Memory per device of a training run, from the model's config alone (no weights loaded)."""
    from opdkit.train import ConfigError, load_config
    from opdkit.train.plan import PlanError, plan_run

    try:
        report = plan_run(load_config(config, overrides or []), memory_gb, model_config=model_config)
    except (ConfigError, PlanError, KeyError) as exc:
        _fail(str(exc))
    typer.echo(report.text)


@app.command("verl-config")
def verl_config(
    config: str = typer.Argument(..., help="YAML config file or packaged preset name (e.g. paper/scope)."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides: section.key=value (verl.* included)."
    ),
) -> None:
    """Print the `python -m verl.trainer.main_ppo` command (Hydra overrides) that runs CONFIG on verl."""
    import yaml

    from opdkit.integrations.verl.config_gen import ConfigError, verl_command

    path = _resolve_config_path(config)
    try:
        with open(path, encoding="utf-8") as handle:
            command = verl_command(yaml.safe_load(handle) or {}, overrides or [])
    except (ConfigError, yaml.YAMLError) as exc:
        _fail(f"{path}: {exc}")
    typer.echo(command.render())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
