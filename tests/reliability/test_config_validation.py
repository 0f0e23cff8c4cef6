"""Bad configuration values are refused when the config is loaded: one line naming the key (and the file),
exit code 2, no traceback, no run directory. Each case below ended in a traceback or was silently accepted
before the ranges were declared next to the fields."""

from __future__ import annotations

import pytest
from reliability_helpers import assert_clean_refusal, invoke

from opdkit.train.config import ConfigError, load_config

# (override, text the one-line error must contain)
BAD_VALUES = [
    ("steps=-5", "steps must be >= 1, got -5"),
    ("steps=0", "steps must be >= 1"),
    ("threads=0", "threads must be >= 1"),
    ("seed=-1", "seed must be >= 0"),
    ("log_every=0", "log_every must be >= 1"),
    ("keep_checkpoints=0", "keep_checkpoints must be >= 1"),
    ("checkpoint_every=-1", "checkpoint_every must be >= 0"),
    ("rollout.prompts_per_step=0", "rollout.prompts_per_step must be >= 1"),
    ("rollout.n=0", "rollout.n must be >= 1"),
    ("rollout.temperature=0", "rollout.temperature must be > 0"),
    ("rollout.temperature=-1", "rollout.temperature must be > 0"),
    ("rollout.top_p=1.5", "rollout.top_p must be <= 1"),
    ("rollout.top_k=-1", "rollout.top_k must be >= 0"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be >= 1"),
    ("rollout.logprob_temperature=0", "rollout.logprob_temperature must be > 0"),
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.lr=-1e-4", "optim.lr must be > 0"),
    ("optim.lr=.inf", "optim.lr must be finite"),
    ("optim.lr=.nan", "optim.lr must be finite"),
    ("optim.grad_clip=-1", "optim.grad_clip must be >= 0"),
    ("optim.mini_batches=0", "optim.mini_batches must be >= 1"),
    ("optim.micro_batch_size=-1", "optim.micro_batch_size must be >= 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
    ("optim.warmup_steps=-3", "optim.warmup_steps must be >= 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas must be < 1"),
    ("eval.k=0", "eval.k must be >= 1"),
    ("eval.temperature=-1", "eval.temperature must be >= 0"),
    ("eval.top_p=0", "eval.top_p must be > 0"),
    ("eval.num_problems=-1", "eval.num_problems must be >= 0"),
    ("eval.every=-2", "eval.every must be >= 0"),
    ("teacher.concurrency=0", "teacher.concurrency must be >= 1"),
    ("teacher.max_failed_steps=0", "teacher.max_failed_steps must be >= 1"),
    ("teacher.timeout_s=0", "teacher.timeout_s must be > 0"),
    ("teacher.rows_per_request=0", "teacher.rows_per_request must be >= 1"),
    ("teacher.temperature=1e-300", None),  # a tiny positive temperature is a valid (if odd) value
    ("model.device=banana", "model.device: 'banana' is not a device"),
    (
        "data.task.name=foo",
        "data.task.name: unknown task 'foo'; valid tasks: addition, addition_mix, countdown, sorting",
    ),
    ("data.task.train_size=0", "data.task.train_size must be >= 1"),
    ("data.max_prompt_tokens=0", "data.max_prompt_tokens must be >= 1"),
]


@pytest.mark.parametrize("override, expected", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_value_out_of_range_names_its_key(override, expected):
    if expected is None:
        load_config(None, [override])  # positive control: loads
        return
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


GROUP_METHODS = ["grpo", "grpo_no_std", "scope", "sc_sdpo", "sdpo_hard_filter", "srpo"]


@pytest.mark.parametrize("method", GROUP_METHODS)
def test_group_methods_need_two_rollouts_per_question(method):
    # with one rollout a group's pass rate is 0 or 1 and its std 0: every step would carry no signal
    with pytest.raises(ConfigError, match=rf"rollout.n=1: method {method} .* needs rollout.n >= 2"):
        load_config(None, [f"method.name={method}", "rollout.n=1"])
    assert load_config(None, [f"method.name={method}", "rollout.n=2"]).rollout.n == 2


@pytest.mark.parametrize("method", ["opd", "sdpo"])
def test_methods_without_group_statistics_accept_one_rollout(method):
    assert load_config(None, [f"method.name={method}", "rollout.n=1"]).rollout.n == 1


def test_an_empty_yaml_file_is_refused_naming_it(tmp_path):
    for text in ("", "# only a comment\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"{path}: the file is empty"):
            load_config(str(path))


def test_a_duplicate_yaml_key_is_refused_naming_key_line_and_file(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("steps: 5\nrollout:\n  n: 4\n  n: 8\n")
    with pytest.raises(ConfigError, match=rf"{path}: duplicate key 'n' \(line 4\)"):
        load_config(str(path))
    path.write_text("steps: 5\nsteps: 6\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'steps' \(line 2\)"):
        load_config(str(path))


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: -5\n")
    with pytest.raises(ConfigError, match=rf"{path}: steps must be >= 1, got -5"):
        load_config(str(path))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("rollout.prompts_per_step=0", "rollout.prompts_per_step"),
        ("optim.micro_batch_size=-1", "optim.micro_batch_size"),
        ("threads=0", "threads"),
        ("model.device=banana", "model.device"),
        ("data.task.name=foo", "valid tasks: addition"),
        ("steps=-5", "steps must be >= 1"),
        ("rollout.n=1", "rollout.n >= 2"),
    ],
)
def test_cli_refuses_with_one_line_and_exit_2(override, expected, tmp_path):
    result = invoke("train", "tiny/grpo", override, "--output", tmp_path / "run")
    assert_clean_refusal(result, expected)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_empty_and_duplicate_files(tmp_path):
    empty, dup = tmp_path / "empty.yaml", tmp_path / "dup.yaml"
    empty.write_text("")
    dup.write_text("steps: 1\nsteps: 2\n")
    assert_clean_refusal(invoke("train", empty, "--output", tmp_path / "a"), str(empty), "empty")
    assert_clean_refusal(invoke("train", dup, "--output", tmp_path / "b"), str(dup), "duplicate key 'steps'")


def test_help_config_shows_each_range():
    result = invoke("train", "tiny/grpo", "--help-config")
    assert result.exit_code == 0
    assert "optim.lr = 0.0001  # AdamW learning rate" in result.output
    assert "[> 0]" in result.output.split("optim.lr = ")[1].splitlines()[0]
    assert "rollout.top_p = 1.0  # nucleus sampling threshold [> 0 and <= 1]" in result.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--k", "0"), "--k"),
        (("--temperature", "-1"), "--temperature"),
        (("--limit", "-1"), "--limit"),
        (("--top-p", "0"), "--top-p"),
        (("--max-new-tokens", "0"), "--max-new-tokens"),
        (("--device", "banana"), "--device: 'banana' is not a device"),
        (("--task", "foo"), "valid tasks: addition"),
    ],
)
def test_eval_arguments_are_checked(args, expected, data_file, model_dirs, tmp_path):
    result = invoke("eval", "--model", model_dirs["student"], "--data", data_file, *args,
                    "--output", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_eval_with_a_missing_model_names_it(data_file, tmp_path):
    result = invoke("eval", "--model", tmp_path / "no_model", "--data", data_file, "--k", 1)
    assert_clean_refusal(result, "--model", "no_model")


@pytest.mark.parametrize(
    "method, override, expected",
    [
        ("sdpo_paced", "method.offline_samples=1", "method.offline_samples must be >= 2"),
        ("sdpo_paced", "method.offline_temperature=0", "method.offline_temperature must be > 0"),
        ("sc_sdpo", "method.sc_alpha=-1", "method.sc_alpha must be >= 0"),
        ("sdpo", "method.alpha=1.5", "method.alpha must be <= 1"),
        ("sdpo", "method.top_k=0", "method.top_k must be >= 1"),
        ("scope", "method.tau=0", "method.tau must be > 0"),
    ],
)
def test_method_parameters_have_ranges_too(method, override, expected):
    # PACED's p0 from one offline sample is 0 or 1, so p0(1-p0) = 0 for every question: no signal at all
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [f"method.name={method}", override])
