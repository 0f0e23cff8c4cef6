"""Fixtures for trainer tests: a tiny student and teacher built locally, and a toy dataset whose verifier
gives a random model a mixed pass rate, so every method has signal from the first step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_verifier import HALF_OF_THE_VOCABULARY, register

from lm_fixtures import save_tiny_pair

register()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """A student and a differently-initialised teacher sharing one character tokenizer."""
    return save_tiny_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory) -> Path:
    """One warm-start cache for the session's slow tests (the default tiny pair is trained once, ~1.5 min)."""
    return tmp_path_factory.mktemp("warmstart-cache")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Say something ({i})"}], "solution": HALF_OF_THE_VOCABULARY,
         "verifier": "test/first_char", "data_source": "toy"}
        for i in range(24)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def overrides(tiny_dirs: dict[str, Path], toy_data: Path):
    """``overrides(method, steps=2)``: dotted overrides for a short run on the tiny models and toy data."""
    return lambda method, steps=2: _overrides(tiny_dirs, toy_data, method, steps)


def _overrides(tiny_dirs: dict[str, Path], toy_data: Path, method: str, steps: int) -> list[str]:
    return [
        f"method.name={method}",
        f"model.student={tiny_dirs['student']}",
        f"steps={steps}",
        "rollout.prompts_per_step=4",
        "rollout.n=4",
        "rollout.max_new_tokens=6",
        f"data.train={toy_data}",
        f"data.eval={toy_data}",
        "eval.k=2",
        "eval.num_problems=3",
        "eval.at_start=false",
        "teacher.kind=local",
        f"teacher.path={tiny_dirs['teacher']}",
        "optim.lr=0.001",
    ]


@pytest.fixture
def step_setup(tiny_dirs, toy_data, overrides):
    """``step_setup(method, successes=None)`` -> (method config, real StepBatch, MethodContext).

    The batch holds 4 questions × 4 rollouts sampled from the tiny student; ``successes`` (16 bools) overrides
    the verdicts so a test can choose every group's pass rate.
    """
    import dataclasses

    import torch

    from opdkit.eval.evaluate import VerifierCache
    from opdkit.rollout import SamplingParams
    from opdkit.teachers.local import LocalTeacher
    from opdkit.teachers.self_teacher import make_teacher_weights
    from opdkit.train.config import load_config
    from opdkit.train.methods import MethodContext
    from opdkit.train.rollouts import RolloutRequest, collect_rollouts
    from opdkit.train.setup import load_data, load_models
    from opdkit.train.student import choose_forward

    def build(method: str, successes=None, extra=()):
        torch.manual_seed(0)
        cfg = load_config(None, [*overrides(method), *extra])
        models = load_models(cfg, torch.device("cpu"))
        data = load_data(cfg, models.tokenizer, {})
        ctx = MethodContext(
            student=models.student,
            tokenizer=models.tokenizer,
            temperature=1.0,
            forward=choose_forward(models.student, True),  # hidden states: the tiny model passes the check
            teacher=LocalTeacher.from_path(str(tiny_dirs["teacher"])),
            self_teacher=make_teacher_weights(models.student, cfg.self_teacher),
            self_teacher_options=cfg.self_teacher,
        )
        params = SamplingParams(n=4, temperature=1.0, max_new_tokens=6)
        request = RolloutRequest([0, 1, 2, 3], params, seed=3, first_group_id=0, logprob_temperature=1.0,
                                 micro_batch_size=0, forward=ctx.forward)  # fmt: skip
        batch = collect_rollouts(models.student, models.tokenizer, data, VerifierCache(), request).batch
        if successes is not None:
            s = torch.tensor(successes, dtype=torch.bool)
            batch = dataclasses.replace(batch, success_N=s, rewards_N=s.float())
        return cfg.method, batch, ctx

    return build
