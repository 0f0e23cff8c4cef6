"""The README's quick start for a real checkpoint, run on Qwen3's real tokenizer and chat template with a
small random Qwen3 (``tests/qwen3_tiny.py``): ``opdkit train paper/<method> ...`` for 2 steps, then
``opdkit eval --dtype bfloat16 --chat-template-kwargs '{enable_thinking: false}'``.

Checked: every prompt the model sees — training, the self-teacher's reprompted context, the in-loop and the
``opdkit eval`` evaluation — is rendered non-thinking (ends with the empty think block), and generation stops
at ``<|im_end|>`` although the checkpoint's generation config lists only ``<|endoftext|>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opdkit.cli import app
from opdkit.rewards.base import VERIFIERS, Verdict
from qwen3_tiny import THINK_OFF


def _even_length():
    """Success when the response has an even number of characters: a mixed pass rate for random text."""

    def verify(completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        ok = len(completion) % 2 == 0
        return Verdict(score=float(ok), correct=ok, pred=str(len(completion)), feedback="Answer in pairs.")

    return verify


if "test/even_length" not in VERIFIERS:
    VERIFIERS.add("test/even_length", _even_length)


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "questions.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i),
             "verifier": "test/even_length", "data_source": "toy"} for i in range(8)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Spy:
    """Wraps ``module.name`` and keeps what each call returned."""

    def __init__(self, monkeypatch, module: object, name: str) -> None:
        self.calls: list = []
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            self.calls.append(out)
            return out

        monkeypatch.setattr(module, name, wrapped)


def _shrink(method: str) -> list[str]:
    """The paper preset scaled to a CPU test: 2 steps of 2 questions × 4 rollouts of ≤ 8 tokens."""
    common = ["steps=2", "rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=8",
              "optim.micro_batch_size=0", "eval.k=2", "eval.num_problems=2", "eval.max_new_tokens=8",
              "eval.every=0", "warmstart.cache_dir=unused"]  # fmt: skip
    if method == "scope":  # the paper's vLLM teacher replaced by the same checkpoint in-process
        common += ["teacher.kind=local", "model.chat_template_kwargs={enable_thinking: false}"]
    return common


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sc_sdpo", "scope"])
def test_quick_start_renders_non_thinking_prompts_and_stops_at_im_end(
    method, qwen3_dir, chat_data, tmp_path, monkeypatch
):
    import opdkit.train.methods.sdpo as sdpo
    import opdkit.train.rollouts as rollouts
    import opdkit.train.setup as setup

    encoded = Spy(monkeypatch, setup, "encode_chats")
    sampled = Spy(monkeypatch, rollouts, "sample")
    reprompted = Spy(monkeypatch, sdpo, "build_teacher_context")
    runner = CliRunner()
    run = tmp_path / "run"
    extra = [f"teacher.path={qwen3_dir}"] if method == "scope" else []
    data = [f"data.train={chat_data}", f"data.eval={chat_data}"]
    args = ["train", f"paper/{method}", f"model.student={qwen3_dir}", *data, *_shrink(method), *extra]
    result = runner.invoke(app, [*args, "--output", str(run)])
    assert result.exit_code == 0, result.output
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # training prompts
    train_ids = encoded.calls[0]
    assert len(train_ids) == 8 and all(tok.decode(ids).endswith(THINK_OFF) for ids in train_ids)
    # the self-teacher's reprompted prompts (SC-SDPO)
    if method == "sc_sdpo":
        teacher_ids = [ids for ctx in reprompted.calls for ids in ctx.prompt_ids]
        assert teacher_ids and all(tok.decode(ids).endswith(THINK_OFF) for ids in teacher_ids)
    # rollouts stop at <|im_end|>: a finished row's last token is it, and it appears nowhere earlier
    rows = [(r, m) for out in sampled.calls for r, m in zip(out.response_ids_N_T, out.response_mask_N_T)]
    stopped = 0
    for ids, mask in rows:
        real = ids[mask.bool()].tolist()
        assert im_end not in real[:-1]
        stopped += real[-1] == im_end
    assert stopped >= len(rows) // 2  # P(stop within 8 tokens) ≈ 1 − 0.75⁸ = 0.9
    # the in-loop evaluation records the rendered prompt
    records = [json.loads(line) for line in (run / "eval" / "step_2.jsonl").read_text().splitlines()]
    assert records and all(r["rendered_prompt"].endswith(THINK_OFF) for r in records)

    # opdkit eval on the trained checkpoint, as the README shows it
    model = run / "checkpoints" / "step_2" / "model"
    out = tmp_path / "eval"
    args = ["eval", "--model", str(model), "--data", str(chat_data), "--k", "2", "--max-new-tokens", "8",
            "--limit", "2", "--dtype", "bfloat16", "--batch-size", "1"]  # fmt: skip
    args += ["--kv-cache-tokens", "64"]
    args += ["--chat-template-kwargs", "{enable_thinking: false}"]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["rendered_prompt"].endswith(THINK_OFF) for r in records)


def test_eval_without_chat_kwargs_renders_thinking_mode(qwen3_dir, chat_data, tmp_path):
    """The default rendering of Qwen3's template is thinking mode (no empty think block): the option
    above is what changes it."""
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", str(qwen3_dir), "--data", str(chat_data), "--k", "1",
                                      "--max-new-tokens", "2", "--limit", "1", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert (
        record["rendered_prompt"].endswith("<|im_start|>assistant\n")
        and "<think>" not in record["rendered_prompt"]
    )


def test_eval_rejects_a_chat_kwargs_value_that_is_not_a_mapping(qwen3_dir, chat_data, tmp_path):
    args = ["eval", "--model", str(qwen3_dir), "--data", str(chat_data), "--chat-template-kwargs"]
    result = CliRunner().invoke(app, [*args, "enable_thinking", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "must be a mapping" in result.output
