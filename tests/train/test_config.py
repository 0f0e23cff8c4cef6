"""Configuration: strict keys with the valid ones listed, typed dotted overrides, presets, inheritance."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdkit.train.config import TrainConfig, config_from_dict, load_config
from opdkit.train.configio import ConfigError, describe, from_dict, to_dict

PRESETS = sorted((Path(__file__).parents[2] / "src" / "opdkit" / "configs").rglob("*.yaml"))


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown key 'rollout.temprature'; valid keys of 'rollout': .*temperature"
    ):
        load_config(None, ["rollout.temprature=0.6"])
    with pytest.raises(ConfigError, match=r"unknown key 'stepz'; valid keys of the top level: seed, steps"):
        config_from_dict({"stepz": 3})


def test_method_parameters_depend_on_the_method():
    cfg = load_config(None, ["method.name=scope", "method.tau=0.5"])
    assert cfg.method.tau == 0.5 and cfg.method.clip_high == 0.2  # SCOPE's own defaults
    with pytest.raises(
        ConfigError, match=r"unknown key 'method.tau'; valid keys of 'method': name, clip_low"
    ):
        load_config(None, ["method.name=grpo", "method.tau=0.5"])
    with pytest.raises(ConfigError, match=r"unknown method 'scop'; valid methods: grpo, grpo_no_std, opd"):
        load_config(None, ["method.name=scop"])


def test_overrides_are_typed():
    cfg = load_config(
        None, ["optim.lr=1e-5", "rollout.n=4", "self_teacher.include_environment_feedback=true"]
    )
    assert (
        cfg.optim.lr == 1e-5 and cfg.rollout.n == 4 and cfg.self_teacher.include_environment_feedback is True
    )
    with pytest.raises(ConfigError, match=r"rollout.n: expected an integer, got 'four'"):
        load_config(None, ["rollout.n=four"])
    with pytest.raises(ConfigError, match=r"teacher.kind: 'vllm' is not one of 'none', 'local', 'server'"):
        load_config(None, ["teacher.kind=vllm"])
    with pytest.raises(ConfigError, match=r"not of the form section.key=value"):
        load_config(None, ["rollout.n"])


def test_validation_inside_sections_is_reported_as_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown self_teacher.weights 'foo'; valid: ema, live, base"):
        load_config(None, ["self_teacher.weights=foo"])
    with pytest.raises(ConfigError, match=r"requires method.alpha=1.0"):
        load_config(None, ["method.name=sdpo", "method.full_logit=false"])


def test_round_trip_through_a_dict_is_the_identity():
    cfg = load_config(
        None, ["method.name=sc_sdpo", "method.sc_alpha=1.0", "model.chat_template_kwargs={a: 1}"]
    )
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_base_files_are_merged_and_cycles_refused(tmp_path):
    (tmp_path / "common.yaml").write_text("steps: 7\nrollout: {n: 3, temperature: 0.6}\n")
    (tmp_path / "run.yaml").write_text("base: common.yaml\nrollout: {n: 5}\nmethod: {name: opd}\n")
    cfg = load_config(str(tmp_path / "run.yaml"))
    assert (cfg.steps, cfg.rollout.n, cfg.rollout.temperature, cfg.method.name) == (7, 5, 0.6, "opd")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        load_config(str(tmp_path / "a.yaml"))


def test_a_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML"):
        load_config(str(bad))
    bad.write_text("rollout: {n: 2, bogus: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'rollout.bogus'"):
        load_config(str(bad))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_loads(preset):
    if preset.name.startswith("_"):
        pytest.skip("a base file, not a run preset")
    load_config(str(preset))


def test_describe_lists_every_key_with_its_documentation():
    lines = describe(TrainConfig)
    assert any(line.startswith("rollout.n = 8  # G: rollouts per question") for line in lines)
    assert any(line.startswith("self_teacher.update_rate = 0.05") for line in lines)
