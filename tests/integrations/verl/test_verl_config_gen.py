"""``opdkit verl-config``: opdkit training configs (the same files and presets ``opdkit train`` reads) mapped
to verl Hydra overrides, the errors for what verl cannot run, and the CLI command. Runs without verl (the
generator only emits text); test_verl_compose.py composes the output with verl's Hydra config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("yaml")
pytest.importorskip("typer")

from opdkit.integrations.verl.config_gen import ConfigError, format_value, verl_command, verl_overrides

BASE = {
    "model": {"student": "/models/student"},
    "data": {"train": "/data/train.parquet", "eval": "/data/val.parquet"},
    "teacher": {"kind": "local", "path": "/models/teacher"},
}


def _overrides(method: dict, *dotted: str, **sections) -> dict[str, str]:
    cfg = {**BASE, "method": method, **sections}
    return dict(item.split("=", 1) for item in verl_overrides(cfg, dotted))


def test_scope_maps_to_the_opdkit_trainer_loss_and_parameters() -> None:
    out = _overrides(
        {"name": "scope", "tau": 0.5},
        "verl.n_gpus_per_node=4",
        steps=200,
        rollout={"prompts_per_step": 256, "n": 8, "temperature": 0.6, "max_new_tokens": 12288},
        optim={"lr": 5.0e-5, "micro_batch_size": 2},
        eval={"k": 32, "every": 25},
    )
    assert out["trainer.v1.trainer_mode"] == "opdkit_sync"
    assert out["distillation.enabled"] == "true"
    assert out["distillation.distillation_loss.loss_mode"] == "opdkit_scope"
    assert out["distillation.distillation_loss.use_policy_gradient"] == "false"
    assert out["distillation.distillation_loss.use_task_rewards"] == "false"
    assert out["distillation.distillation_loss.loss_max_clamp"] == "null"
    assert out["distillation.teacher_models.teacher_model.model_path"] == "/models/teacher"
    assert out["+algorithm.opdkit.weighting"] == "scope"
    assert out["+algorithm.opdkit.scope_tau"] == "0.5"
    assert out["+algorithm.opdkit.scope_student_exponent"] == "1.0"  # paper signs (§5.6)
    assert out["+algorithm.opdkit.scope_teacher_exponent"] == "-1.0"
    assert out["+algorithm.opdkit.scope_agg"] == "code"
    assert out["actor_rollout_ref.actor.loss_agg_mode"] == "token-mean"
    assert out["actor_rollout_ref.rollout.temperature"] == "0.6"
    assert out["actor_rollout_ref.rollout.n"] == "8"
    assert out["data.train_batch_size"] == "256"
    assert out["data.max_response_length"] == "12288"
    assert out["actor_rollout_ref.actor.ppo_mini_batch_size"] == "256"  # optim.mini_batches = 1
    assert out["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == "2"
    assert out["actor_rollout_ref.actor.optim.lr"] == "5e-05"
    assert out["trainer.total_training_steps"] == "200"
    assert out["trainer.test_freq"] == "25"
    assert out["actor_rollout_ref.rollout.val_kwargs.n"] == "32"
    assert out["trainer.n_gpus_per_node"] == "4"


def test_scope_ablations_and_sign_presets() -> None:
    out = _overrides({"name": "scope", "sign_preset": "released_scripts", "use_teacher_weights": False})
    assert out["+algorithm.opdkit.scope_student_exponent"] == "-1.0"
    assert out["+algorithm.opdkit.scope_teacher_exponent"] == "-1.0"
    assert out["+algorithm.opdkit.scope_use_student_weights"] == "true"
    assert out["+algorithm.opdkit.scope_use_teacher_weights"] == "false"
    plain = _overrides({"name": "scope", "dual_path": False})  # §5.6: dual path off = plain OPD
    assert plain["distillation.distillation_loss.loss_mode"] == "k1"
    assert plain["distillation.distillation_loss.use_policy_gradient"] == "true"


@pytest.mark.parametrize(("name", "normalize"), [("grpo", "true"), ("grpo_no_std", "false")])
def test_grpo_methods_use_opdkit_grpo_without_a_teacher(name: str, normalize: str) -> None:
    out = _overrides({"name": name}, "optim.mini_batches=4", rollout={"prompts_per_step": 32})
    assert out["algorithm.adv_estimator"] == "opdkit_grpo"
    assert out["algorithm.norm_adv_by_std_in_grpo"] == normalize
    assert out["actor_rollout_ref.actor.clip_ratio_high"] == "0.28"  # §10.1 clip-higher
    assert out["actor_rollout_ref.actor.ppo_mini_batch_size"] == "8"  # 32 prompts in 4 updates
    assert out["trainer.v1.trainer_mode"] == "sync"
    assert not any(key.startswith("distillation.") for key in out)


def test_sc_weighting_turns_grpo_into_opdkit_sc_grpo() -> None:
    out = _overrides({"name": "grpo"}, "verl.sc_weighting=pass_rate", "verl.sc_alpha=1.0")
    assert out["algorithm.adv_estimator"] == "opdkit_sc_grpo"
    assert out["+algorithm.opdkit.weighting"] == "pass_rate"
    assert out["+algorithm.opdkit.sc_alpha"] == "1.0"


@pytest.mark.parametrize(
    ("divergence", "loss_mode", "policy_gradient"),
    [
        ("k1", "opdkit_sc_k1", "true"),
        ("k3", "opdkit_sc_k3", "false"),
        ("forward_kl_topk", "opdkit_sc_forward_kl_topk", "false"),
    ],
)
def test_sc_weighted_opd_divergences(divergence: str, loss_mode: str, policy_gradient: str) -> None:
    weighting = "hard_filter" if divergence == "k3" else "pass_rate"
    out = _overrides({"name": "opd"}, f"verl.sc_weighting={weighting}", f"verl.sc_divergence={divergence}")
    assert out["distillation.distillation_loss.loss_mode"] == loss_mode
    assert out["distillation.distillation_loss.use_policy_gradient"] == policy_gradient
    assert out["+algorithm.opdkit.weighting"] == weighting
    assert out["trainer.v1.trainer_mode"] == "opdkit_sync"
    assert ("distillation.distillation_loss.topk" in out) == (divergence == "forward_kl_topk")


def test_micro_batch_zero_means_token_budgeted_micro_batches() -> None:
    out = _overrides({"name": "grpo"}, "optim.micro_batch_size=0", rollout={"max_new_tokens": 30000})
    assert out["actor_rollout_ref.actor.use_dynamic_bsz"] == "true"
    assert out["actor_rollout_ref.rollout.log_prob_use_dynamic_bsz"] == "true"
    assert out["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"] == str(2048 + 30000)  # one whole sequence


def test_validation_is_off_without_a_parquet_eval_set() -> None:
    out = _overrides(
        {"name": "grpo"},
        "data.eval=math500",
        model={"student": "/m", "chat_template_kwargs": {"enable_thinking": False}},
    )
    assert out["data.val_files"] == "/data/train.parquet"
    assert out["trainer.val_before_train"] == "false"
    assert out["trainer.test_freq"] == "-1"
    assert out["+data.apply_chat_template_kwargs.enable_thinking"] == "false"  # composes (test_verl_compose)


def test_packaged_paper_preset_maps_with_a_teacher_path() -> None:
    import yaml

    preset = Path(__file__).resolve().parents[3] / "src" / "opdkit" / "configs" / "paper" / "scope.yaml"
    raw = yaml.safe_load(preset.read_text())
    extra = ["verl.teacher_path=Skywork/Skywork-OR1-7B", "data.train=/data/deepmath.parquet"]
    out = dict(item.split("=", 1) for item in verl_overrides(raw, extra))
    assert out["distillation.teacher_models.teacher_model.model_path"] == "Skywork/Skywork-OR1-7B"
    assert out["actor_rollout_ref.model.path"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def test_extra_overrides_come_last() -> None:
    cfg = {
        **BASE,
        "method": {"name": "opd"},
        "verl": {"extra": ["trainer.save_freq=50", "trainer.logger=[console,wandb]"]},
    }
    assert verl_overrides(cfg)[-2:] == ["trainer.save_freq=50", "trainer.logger=[console,wandb]"]


@pytest.mark.parametrize(
    ("cfg", "dotted", "message"),
    [
        ({**BASE, "method": {"name": "scope", "taus": 1}}, (), r"unknown key 'method\.taus'"),
        ({**BASE, "method": {"name": "grpo"}}, ("rollout.nn=8",), r"unknown key 'rollout\.nn'"),
        (
            {**BASE, "method": {"name": "grpo"}},
            ("verl.gpus=8",),
            r"unknown key 'verl\.gpus'; valid keys of verl: nnodes",
        ),
        ({**BASE, "method": {"name": "gpro"}}, (), r"unknown method 'gpro'"),
        ({**BASE, "method": {"name": "sdpo", "full_logit": False, "alpha": 1.0}}, (), r"method\.full_logit"),
        (
            {**BASE, "method": {"name": "sdpo"}},
            ("self_teacher.weights=trust-region",),
            r"valid: ema, base, live",
        ),
        (
            {**BASE, "method": {"name": "sc_sdpo"}},
            ("self_teacher.instruction=x",),
            r"self_teacher\.instruction",
        ),
        ({**BASE, "method": {"name": "srpo", "entropy": "topk"}}, (), r"method\.entropy='topk'"),
        ({**BASE, "method": {"name": "sdpo"}}, ("verl.sc_weighting=pass_rate",), r"use method\.name=sc_sdpo"),
        (
            {**BASE, "method": {"name": "scope"}},
            ("teacher.path=",),
            r"needs a teacher model.*verl\.teacher_path",
        ),
        (
            {**BASE, "method": {"name": "opd"}},
            ("verl.sc_weighting=pass_rate", "verl.sc_divergence=jsd"),
            r"verl\.sc_divergence: unknown 'jsd'",
        ),
        ({**BASE, "method": {"name": "grpo"}}, ("verl.extra=[oops]",), r"verl\.extra.*'oops'"),
        (
            {**BASE, "method": {"name": "grpo"}},
            ("verl.engine=hf",),
            r"verl\.engine: unknown 'hf'; valid: vllm",
        ),
        (
            {**BASE, "method": {"name": "grpo"}},
            ("data.train=task",),
            r"data\.train: verl reads a parquet file",
        ),
        ({**BASE, "method": {"name": "grpo"}}, ("optim.mini_batches=3",), r"mini_batches=3 must divide"),
        (
            {**BASE, "method": {"name": "grpo", "eps": 1e-8}},
            (),
            r"method\.eps=1e-08 is not supported on verl",
        ),
        ({**BASE, "method": {"name": "opd", "discount": 0.9}}, (), r"method\.discount=0\.9 is not supported"),
        (
            {**BASE, "method": {"name": "scope", "loss_averaging": "microbatch"}},
            (),
            r"method\.loss_averaging='microbatch' is not supported on verl",
        ),
        (
            {**BASE, "method": {"name": "scope"}},
            ("teacher.temperature=0.6",),
            r"teacher pool scores at temperature 1",
        ),
        ({**BASE, "method": {"name": "scope"}}, ("verl.sc_weighting=pass_rate",), r"applies to grpo and opd"),
    ],
)
def test_bad_configs_name_the_key_and_the_choices(cfg: dict, dotted: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        verl_overrides(cfg, dotted)


def test_format_value() -> None:
    values = (True, False, None, [1, "a"], 0.2, "Qwen/Qwen3-8B", "/m/x-1.5B", {"a": False})
    expected = ["true", "false", "null", "[1,a]", "0.2", "Qwen/Qwen3-8B", "/m/x-1.5B", "{a:false}"]
    assert [format_value(v) for v in values] == expected
    # Hydra's grammar rejects ~, spaces, commas unquoted: single-quote them, escaping ' and \
    assert format_value("~/data/a b,c.parquet") == "'~/data/a b,c.parquet'"
    assert format_value("it's") == "'it\\'s'"


def test_render_quotes_overrides_for_the_shell() -> None:
    text = verl_command({**BASE, "method": {"name": "grpo"}}).render()
    assert text.startswith(
        "python -m verl.trainer.main_ppo \\\n    actor_rollout_ref.model.path=/models/student"
    )
    assert "'trainer.logger=[console]'" in text  # brackets are quoted


def test_generator_never_imports_verl() -> None:
    code = (
        "import sys, opdkit.cli\n"
        "from opdkit.integrations.verl.config_gen import verl_overrides\n"
        "verl_overrides({'model': {'student': '/m'}, 'data': {'train': '/d.parquet'}})\n"
        "assert 'verl' not in sys.modules and 'transformers' not in sys.modules"
    )
    src = Path(__file__).resolve().parents[3] / "src"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src)})


def test_cli_prints_the_command_and_rejects_bad_configs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opdkit.cli import app

    good = tmp_path / "run.yaml"
    good.write_text("method: {name: grpo}\nmodel: {student: /m}\ndata: {train: /d.parquet}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["verl-config", str(good), "rollout.n=16"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("python -m verl.trainer.main_ppo")
    assert "algorithm.adv_estimator=opdkit_grpo" in result.output
    assert "actor_rollout_ref.rollout.n=16" in result.output
    result = runner.invoke(app, ["verl-config", str(good), "method.alpha=2"])
    assert result.exit_code == 2
    assert "method.alpha" in result.output


@pytest.mark.parametrize("name", ["sdpo", "sc_sdpo", "sdpo_hard_filter", "sdpo_paced", "srpo"])
def test_sdpo_family_maps_to_the_opdkit_sdpo_trainer(name: str) -> None:
    out = _overrides(
        {"name": name}, "self_teacher.weights=base", "self_teacher.include_environment_feedback=true"
    )
    assert out["trainer.v1.trainer_mode"] == "opdkit_sdpo"
    assert out["+algorithm.opdkit_sdpo.method"] == name
    assert out["+algorithm.opdkit_sdpo.teacher_mode"] == "base"
    assert out["+algorithm.opdkit_sdpo.include_environment_feedback"] == "true"
    assert (out["+algorithm.opdkit_sdpo.alpha"], out["+algorithm.opdkit_sdpo.top_k"]) == ("0.5", "100")
    assert out["actor_rollout_ref.actor.use_kl_loss"] == "true"  # verl builds the ref model (the teacher)
    assert "distillation.enabled" not in out  # no teacher pool: the actor pool's GPUs only
    assert ("+algorithm.opdkit_sdpo.sc_alpha" in out) == (name == "sc_sdpo")
    assert ("+algorithm.opdkit_sdpo.srpo_beta" in out) == (name == "srpo")
