"""The papers' presets: generated from one description (``opdkit.train.presets``), one per table row, each
header naming its row and the paper's numbers; regenerating changes nothing; ``opdkit presets`` lists them;
``opdkit verl-config`` still maps the presets of the methods verl runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opdkit.cli import app
from opdkit.integrations.verl.config_gen import verl_overrides
from opdkit.train.config import PRESETS_DIR, load_config, preset_names
from opdkit.train.presets import PAPER_DIR, all_presets, rendered, reproduction_table

PRESETS = {p.name: p for p in all_presets()}
TASKS = ("chemistry", "physics", "biology", "material", "tooluse")
SC_METHODS = (
    "grpo",
    "grpo_no_std",
    "sdpo",
    "sdpo_paced",
    "sdpo_hard_filter",
    "srpo",
    "sc_sdpo_alpha1",
    "sc_sdpo",
)


def test_regenerating_changes_nothing():
    files = rendered()
    on_disk = set(PAPER_DIR.rglob("*.yaml"))
    assert on_disk == set(files), "configs/paper holds a file the generator does not write (or lacks one)"
    stale = [
        str(p.relative_to(PRESETS_DIR)) for p, text in files.items() if p.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"edited or stale presets; run 'python -m opdkit.train.presets': {stale}"


def test_one_preset_per_table_row():
    names = set(PRESETS)
    assert {f"paper/{t}/{m}" for t in TASKS for m in SC_METHODS} <= names  # 8 methods × 5 tasks
    assert {f"paper/olmo/{t}/{m}" for t in TASKS for m in ("sdpo", "sc_sdpo")} <= names
    scope_rows = {"scope", "opd", "grpo", "scope_no_weights", "scope_reversed_teacher",
                  "scope_no_student_weights", "scope_released_scripts"}  # fmt: skip
    assert {f"paper/math/{r}" for r in scope_rows} <= names
    assert len(PRESETS) == 40 + 10 + 7 + 2 + 10  # + the Qwen3 SCOPE pair + the short-name aliases
    assert set(preset_names()) >= names


@pytest.mark.parametrize(
    ("name", "row", "numbers"),
    [
        ("paper/chemistry/sc_sdpo", "row 'SC-SDPO α=0.5', column Chem", "mean@16 / maj@16 = 80.6 / 81.3"),
        ("paper/tooluse/srpo", "row 'SRPO', column Tool", "mean@16 / maj@16 = 71.8 / 73.3"),
        ("paper/biology/grpo_no_std", "row 'GRPO w/o Norm', column Bio", "= 53.2 / 53.9"),
        ("paper/olmo/physics/sdpo", "OLMo-3-7B-Instruct, row 'SDPO', column Phys", "= 68.2 / 68.7"),
        ("paper/math/scope", "SCOPE (main results)", "42.7/77.9; 30.4/50.9; 80.9/97.2"),
        ("paper/math/scope_reversed_teacher", "reversed teacher-weight direction", "AIME24 Avg@32 38.6"),
        ("paper/math/grpo", "GRPO baseline", "not given"),
    ],
)
def test_headers_name_the_row_and_the_numbers(name, row, numbers):
    text = (PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    header = " ".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    assert row in header and numbers in header, header


def test_settings_of_the_rows():
    for task in TASKS:
        for method in ("grpo", "grpo_no_std"):  # the baseline's per-sequence token mean, 4 updates per step
            cfg = load_config(f"paper/{task}/{method}")
            assert (cfg.method.agg, cfg.optim.lr, cfg.optim.mini_batches) == ("seq-mean-token-mean", 1e-6, 4)
        for method in ("sdpo", "sdpo_paced", "sdpo_hard_filter", "sc_sdpo_alpha1", "sc_sdpo"):
            cfg = load_config(f"paper/{task}/{method}")
            assert cfg.self_teacher.include_environment_feedback is (task == "tooluse")
            assert (cfg.optim.lr, cfg.rollout.max_new_tokens) == (1e-5, 2048)
    assert load_config("paper/tooluse/sdpo").data.verifier_options == {"toolcall": {"compat_regex": True}}
    assert (load_config("paper/tooluse/sdpo").data.train, load_config("paper/tooluse/sdpo").data.eval) == (
        "tooluse:train",
        "tooluse",
    )
    assert load_config("paper/sc_sdpo_alpha1").method.sc_alpha == 1.0
    assert load_config("paper/math/scope_no_weights").method.use_seq_weights is False
    assert load_config("paper/math/scope_reversed_teacher").method.exponents() == (1.0, 1.0)
    assert load_config("paper/math/scope").method.loss_averaging == "minibatch"
    assert load_config("paper/math/grpo").teacher.kind == "none"


def test_cli_lists_presets_and_prints_the_table():
    runner = CliRunner()
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    listed = [line for line in result.output.splitlines() if not line.startswith(" ")]
    assert listed == preset_names()
    assert "    reports: mean@16 / maj@16 = 80.6 / 81.3" in result.output
    table = runner.invoke(app, ["presets", "--markdown"])
    assert table.output == reproduction_table()


def test_readme_holds_the_generated_reproduction_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert reproduction_table() in readme, "README's reproduction table is stale: opdkit presets --markdown"


VERL_READY = ["data.train=/data/train.parquet", "data.eval=", "verl.teacher_path=/models/teacher"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_verl_config_maps_every_preset(name):
    raw = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    overrides = dict(item.split("=", 1) for item in verl_overrides(raw, VERL_READY))
    assert overrides["actor_rollout_ref.model.path"] == raw["model"]["student"]
    self_distillation = raw["method"]["name"] in {"sdpo", "sc_sdpo", "sdpo_hard_filter", "sdpo_paced", "srpo"}
    assert (overrides["trainer.v1.trainer_mode"] == "opdkit_sdpo") == self_distillation
    if raw["method"]["name"].startswith("grpo"):
        assert overrides["actor_rollout_ref.actor.loss_agg_mode"] == raw["method"]["agg"]
