"""``opdkit verl-config``: the mapping from an opdkit config (plain dict) to verl Hydra overrides, its errors,
and the CLI command. Runs without verl (the generator only emits text); test_verl_compose.py composes the
output with verl's real Hydra config where verl is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opdkit.integrations.verl.config_gen import ConfigError, format_value, verl_command, verl_overrides

pytest.importorskip("yaml")
pytest.importorskip("typer")

BASE = {
    "model": {"path": "/models/student", "teacher_path": "/models/teacher"},
    "data": {"train_files": "/data/train.parquet", "val_files": "/data/val.parquet"},
}


def _overrides(method: dict, **sections) -> dict[str, str]:
    cfg = {**BASE, "method": method, **sections}
    return dict(item.split("=", 1) for item in verl_overrides(cfg))


def test_scope_maps_to_the_opdkit_trainer_loss_and_parameters() -> None:
    out = _overrides(
        {"name": "scope", "tau": 0.5},
        rollout={"n": 8},
        train={"batch_size": 256, "lr": 5.0e-5},
        eval={"n": 32},
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
    assert out["actor_rollout_ref.rollout.temperature"] == "0.6"  # SCOPE's rollout temperature (§1.2)
    assert out["actor_rollout_ref.rollout.n"] == "8"
    assert out["data.train_batch_size"] == "256"
    assert out["actor_rollout_ref.actor.ppo_mini_batch_size"] == "256"  # one update per step by default
    assert out["actor_rollout_ref.actor.optim.lr"] == "5e-05"
    assert out["actor_rollout_ref.actor.loss_agg_mode"] == "token-mean"


def test_scope_sign_preset_released_scripts_inverts_the_student_path() -> None:
    out = _overrides({"name": "scope", "sign_preset": "released_scripts"})
    assert out["+algorithm.opdkit.scope_student_exponent"] == "-1.0"
    assert out["+algorithm.opdkit.scope_teacher_exponent"] == "-1.0"


@pytest.mark.parametrize(("name", "normalize"), [("grpo", "true"), ("grpo_no_std", "false")])
def test_grpo_methods_use_opdkit_grpo_without_a_teacher(name: str, normalize: str) -> None:
    out = _overrides({"name": name})
    assert out["algorithm.adv_estimator"] == "opdkit_grpo"
    assert out["algorithm.norm_adv_by_std_in_grpo"] == normalize
    assert out["actor_rollout_ref.actor.clip_ratio_high"] == "0.28"  # §10.1 clip-higher
    assert out["actor_rollout_ref.rollout.temperature"] == "1.0"
    assert out["trainer.v1.trainer_mode"] == "sync"
    assert not any(key.startswith("distillation.") for key in out)


def test_sc_grpo_passes_alpha_to_the_estimator() -> None:
    out = _overrides({"name": "sc_grpo", "alpha": 1.0})
    assert out["algorithm.adv_estimator"] == "opdkit_sc_grpo"
    assert out["+algorithm.opdkit.sc_alpha"] == "1.0"


@pytest.mark.parametrize(
    ("divergence", "loss_mode", "policy_gradient"),
    [
        ("k1", "opdkit_sc_k1", "true"),
        ("k3", "opdkit_sc_k3", "false"),
        ("forward_kl_topk", "opdkit_sc_forward_kl_topk", "false"),
    ],
)
def test_sc_opd_divergences(divergence: str, loss_mode: str, policy_gradient: str) -> None:
    out = _overrides({"name": "sc_opd", "divergence": divergence, "hard_filter": divergence == "k3"})
    assert out["distillation.distillation_loss.loss_mode"] == loss_mode
    assert out["distillation.distillation_loss.use_policy_gradient"] == policy_gradient
    assert out["+algorithm.opdkit.weighting"] == ("hard_filter" if divergence == "k3" else "pass_rate")
    assert ("distillation.distillation_loss.topk" in out) == (divergence == "forward_kl_topk")


def test_without_val_files_validation_is_off() -> None:
    cfg = {"method": "grpo", "model": {"path": "/m"}, "data": {"train_files": ["/a.parquet", "/b.parquet"]}}
    out = dict(item.split("=", 1) for item in verl_overrides(cfg))
    assert out["data.train_files"] == "[/a.parquet,/b.parquet]"
    assert out["trainer.val_before_train"] == "false"
    assert out["trainer.test_freq"] == "-1"


def test_extra_overrides_come_last() -> None:
    cfg = {
        **BASE,
        "method": "opd",
        "verl": {"extra": ["trainer.save_freq=50", "trainer.logger=[console,wandb]"]},
    }
    assert verl_overrides(cfg)[-2:] == ["trainer.save_freq=50", "trainer.logger=[console,wandb]"]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({**BASE, "method": {"name": "scope", "taus": 1}}, r"method\.taus for scope; valid: clip_low"),
        ({**BASE, "method": "grpo", "rollout": {"nn": 8}}, r"rollout\.nn; valid keys of rollout: n,"),
        ({**BASE, "method": "grpo", "trainning": {}}, r"unknown section 'trainning'"),
        ({**BASE, "method": {"name": "gpro"}}, r"unknown 'gpro'; valid: grpo, grpo_no_std, opd, sc_grpo"),
        ({**BASE, "method": "sdpo"}, r"privileged-context.*sc_opd"),
        ({"method": "grpo", "data": BASE["data"]}, r"model\.path is required"),
        (
            {"method": "scope", "model": {"path": "/m"}, "data": BASE["data"]},
            r"model\.teacher_path is required for",
        ),
        ({**BASE, "method": {"name": "sc_opd", "divergence": "jsd"}}, r"method\.divergence: unknown 'jsd'"),
        ({**BASE, "method": "grpo", "verl": {"extra": ["oops"]}}, r"verl\.extra.*'oops'"),
        (
            {**BASE, "method": "grpo", "rollout": {"engine": "hf"}},
            r"rollout\.engine: unknown 'hf'; valid: vllm",
        ),
    ],
)
def test_bad_configs_name_the_key_and_the_choices(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        verl_overrides(cfg)


def test_format_value() -> None:
    values = (True, False, None, [1, "a"], 0.2, "Qwen/Qwen3-8B", "/m/x-1.5B")
    assert [format_value(v) for v in values] == [
        "true",
        "false",
        "null",
        "[1,a]",
        "0.2",
        "Qwen/Qwen3-8B",
        "/m/x-1.5B",
    ]
    # Hydra's grammar rejects ~, spaces, commas unquoted: single-quote them, escaping ' and \
    assert format_value("~/data/a b,c.parquet") == "'~/data/a b,c.parquet'"
    assert format_value("it's") == "'it\\'s'"


def test_render_quotes_overrides_for_the_shell() -> None:
    text = verl_command({**BASE, "method": "grpo"}).render()
    assert text.startswith(
        "python -m verl.trainer.main_ppo \\\n    actor_rollout_ref.model.path=/models/student"
    )
    assert "'trainer.logger=[console]'" in text  # brackets are quoted


def test_generator_never_imports_verl() -> None:
    code = "import sys, opdkit.integrations.verl.config_gen, opdkit.cli; assert 'verl' not in sys.modules"
    src = Path(__file__).resolve().parents[3] / "src"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src)})


def test_cli_prints_the_command_and_rejects_bad_configs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opdkit.cli import app

    good, bad = tmp_path / "run.yaml", tmp_path / "bad.yaml"
    good.write_text("method: {name: grpo}\nmodel: {path: /m}\ndata: {train_files: /d.parquet}\n")
    bad.write_text("method: {name: grpo, alpha: 2}\nmodel: {path: /m}\ndata: {train_files: /d.parquet}\n")
    runner = CliRunner()
    result = runner.invoke(app, ["verl-config", str(good)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("python -m verl.trainer.main_ppo")
    assert "algorithm.adv_estimator=opdkit_grpo" in result.output
    result = runner.invoke(app, ["verl-config", str(bad)])
    assert result.exit_code == 2
    assert "method.alpha for grpo" in result.output
