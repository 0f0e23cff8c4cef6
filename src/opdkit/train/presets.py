"""The papers' presets, one per table row, generated from one description (this module).

``configs/paper/**.yaml`` are written by ``write_presets()`` (``python -m opdkit.train.presets``) and never
edited by hand; a test checks that regenerating changes nothing. Each file's header names the paper row it
reproduces and the numbers the paper reports for it. ``opdkit presets`` lists them.

- SC-SDPO (arXiv 2605.27765) Table 1, Qwen3-8B: 8 methods × 5 tasks -> ``paper/<task>/<method>``, tasks
  ``chemistry physics biology material tooluse``, methods ``grpo grpo_no_std sdpo sdpo_paced
  sdpo_hard_filter srpo sc_sdpo_alpha1 sc_sdpo``; OLMo-3-7B-Instruct: ``paper/olmo/<task>/{sdpo,sc_sdpo}``.
- SCOPE (arXiv 2604.10688), math, R1-Distill-Qwen-1.5B with a Skywork-OR1-7B teacher: ``paper/math/<row>``
  (scope, opd, grpo and the ablations), and the Qwen3-8B -> Qwen3-1.7B-Base pair: ``paper/math_qwen3/<row>``.
- ``paper/<method>``: the chemistry row of each SC-SDPO method and SCOPE's math rows under their short names.

Every row's settings come from the papers' tables and their reference code; where a paper leaves a value
open the choice is named in the header. Numbers the papers do not report say "not given".
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PAPER_DIR = Path(__file__).resolve().parents[1] / "configs" / "paper"

SC_SDPO = "SC-SDPO paper (arXiv 2605.27765), Table 1"
SCOPE = "SCOPE paper (arXiv 2604.10688)"
TASKS = {  # task -> (train, eval, column label)
    "chemistry": ("sciknoweval/chemistry:train", "sciknoweval/chemistry:test", "Chem"),
    "physics": ("sciknoweval/physics:train", "sciknoweval/physics:test", "Phys"),
    "biology": ("sciknoweval/biology:train", "sciknoweval/biology:test", "Bio"),
    "material": ("sciknoweval/material:train", "sciknoweval/material:test", "Mat"),
    "tooluse": ("tooluse:train", "tooluse", "Tool"),
}
# The table as the paper prints it: mean@16/maj@16 for Chem, Phys, Bio, Mat, Tool, Avg.
QWEN_TABLE = """
grpo            | GRPO                | 68.5/70.9 | 64.7/68.3 | 58.9/60.0 | 69.8/69.9 | 67.3/67.6 | 65.8/67.3
grpo_no_std     | GRPO w/o Norm       | 63.9/67.0 | 69.1/76.5 | 53.2/53.9 | 73.3/74.5 | 63.5/63.4 | 64.6/67.1
sdpo            | SDPO                | 78.7/79.2 | 75.8/78.5 | 60.4/61.9 | 78.0/78.6 | 65.1/64.8 | 71.6/72.6
sdpo_paced      | SDPO w/ PACED       | 74.7/75.5 | 69.2/71.7 | 57.0/59.0 | 75.4/75.8 | 64.5/65.7 | 68.2/69.5
sdpo_hard_filter| SDPO w/ Hard Filter | 80.0/80.4 | 76.4/79.6 | 56.0/56.4 | 77.3/78.1 | 63.8/64.8 | 70.7/71.9
srpo            | SRPO                | 80.5/81.6 | 73.4/76.3 | 56.0/60.8 | 77.2/80.3 | 71.8/73.3 | 71.8/74.5
sc_sdpo_alpha1  | SC-SDPO α=1         | 80.0/79.5 | 75.4/77.3 | 58.1/56.3 | 77.1/78.3 | 66.2/66.9 | 71.3/71.7
sc_sdpo         | SC-SDPO α=0.5       | 80.6/81.3 | 81.6/84.9 | 65.4/68.5 | 79.3/80.3 | 67.3/69.3 | 74.8/76.9
"""
OLMO_TABLE = """
sdpo            | SDPO                | 81.1/81.4 | 68.2/68.7 | 52.0/52.0 | 78.0/80.0 | 62.1/65.0 | 68.3/69.4
sc_sdpo         | SC-SDPO α=0.5       | 81.5/82.5 | 71.1/73.4 | 55.9/58.2 | 79.1/80.7 | 62.9/67.3 | 70.1/72.4
"""
BASE_NUMBERS = {
    "Qwen3-8B": "42.4/35.7 57.7/53.8 28.7/14.0 59.7/59.6 58.3/57.4 49.4/44.1",
    "OLMo-3-7B-Instruct": "22.1/9.5 33.3/30.0 13.4/8.0 36.6/30.9 43.4/45.6 29.7/24.8",
}

# method key -> (method section, optimizer and rollout settings that differ from the SDPO family's)
_SDPO_FAMILY = {"lr": 1e-5, "mini_batches": 1, "max_new_tokens": 2048}
_GRPO = {"lr": 1e-6, "mini_batches": 4, "max_new_tokens": 8192}
_METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "grpo": ({"name": "grpo", "agg": "seq-mean-token-mean"}, _GRPO),
    "grpo_no_std": ({"name": "grpo_no_std", "agg": "seq-mean-token-mean"}, _GRPO),
    "sdpo": ({"name": "sdpo"}, _SDPO_FAMILY),
    "sdpo_paced": ({"name": "sdpo_paced"}, _SDPO_FAMILY),
    "sdpo_hard_filter": ({"name": "sdpo_hard_filter"}, _SDPO_FAMILY),
    "srpo": ({"name": "srpo"}, {"lr": 5e-6, "mini_batches": 1, "max_new_tokens": 8192}),
    "sc_sdpo_alpha1": ({"name": "sc_sdpo", "sc_alpha": 1.0}, _SDPO_FAMILY),
    "sc_sdpo": ({"name": "sc_sdpo", "sc_alpha": 0.5}, _SDPO_FAMILY),
}  # fmt: skip
# SDPO-family methods whose tool-use teacher sees the verifier's feedback (SRPO routes to self-distillation
# only rows with a correct sibling, whose demonstration always wins over feedback: nothing to set).
_FEEDBACK_METHODS = ("sdpo", "sdpo_paced", "sdpo_hard_filter", "sc_sdpo")
_NOTES = {
    "grpo": "GRPO: lr 1e-6 with mini-batch 8 of 32 questions (4 updates per step), the SDPO grid's winner; "
    "per-sequence token mean averaged over sequences (method.agg), as the reference's one-sequence "
    "micro-batches.",
    "grpo_no_std": "GRPO w/o Norm: as GRPO with A = r − mean (no std division).",
    "srpo": "SRPO: lr 5e-6, max response 8192 (its paper's Table 3).",
    "sdpo_paced": "PACED: pass rates from one offline pass of the initial model (8 samples at T = 1), "
    "frozen.",
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """One generated preset: its name (``paper/...``), the header lines and the config mapping."""

    name: str
    paper_row: str
    reported: str
    notes: tuple[str, ...]
    config: dict[str, Any]

    def render(self) -> str:
        """The YAML file: a commented header, then the config."""
        header = [
            "GENERATED by opdkit.train.presets (python -m opdkit.train.presets); do not edit by hand.",
            f"Reproduces: {self.paper_row}",
            f"Paper reports: {self.reported}",
            *self.notes,
        ]
        body = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, width=110)
        lines = [part for line in header for part in _wrap(line)]
        return "".join(f"#{line}\n" for line in lines) + body


def _wrap(line: str) -> list[str]:
    """A header line in comment lines of at most 110 characters, continuations indented."""
    parts = textwrap.wrap(line, width=107, break_long_words=False, break_on_hyphens=False)
    return [f" {parts[0]}", *(f"   {p}" for p in parts[1:])]


def _pair(cell: str) -> str:
    return cell.replace("/", " / ")


def _parse_table(text: str) -> dict[str, tuple[str, list[str]]]:
    rows = {}
    for line in text.strip().splitlines():
        key, label, *cells = (c.strip() for c in line.split("|"))
        rows[key] = (label, cells)
    return rows


def _sc_sdpo_config(model: str, task: str, method: str) -> dict[str, Any]:
    section, settings = _METHODS[method]
    train, held_out, _ = TASKS[task]
    config: dict[str, Any] = {
        "seed": 0, "steps": 200, "checkpoint_every": 50,
        "model": {"student": model, "dtype": "bfloat16"},
        "data": {"train": train, "eval": held_out, "max_prompt_tokens": 2048},
        "rollout": {"prompts_per_step": 32, "n": 8, "temperature": 1.0,
                    "max_new_tokens": settings["max_new_tokens"]},
        "optim": {"lr": settings["lr"], "weight_decay": 0.01, "warmup_steps": 10, "grad_clip": 1.0,
                  "mini_batches": settings["mini_batches"], "micro_batch_size": 1},
        "method": dict(section),
        "eval": {"every": 10, "k": 16, "temperature": 0.6, "top_p": 0.95},
    }  # fmt: skip
    if model == "Qwen/Qwen3-8B":
        config["model"]["chat_template_kwargs"] = {"enable_thinking": False}
    if task == "tooluse":
        config["data"]["verifier_options"] = {"toolcall": {"compat_regex": True}}
        if section["name"] in _FEEDBACK_METHODS:
            config["self_teacher"] = {"include_environment_feedback": True}
    return config


def _sc_sdpo_notes(task: str, method: str) -> tuple[str, ...]:
    notes = [
        "Setting: 200 steps, 32 questions × 8 rollouts at T = 1.0, AdamW (wd 0.01, warm-up 10, clip 1.0), "
        "evaluation 16 samples at T = 0.6, top-p 0.95. An 8B student needs more than one GPU ('opdkit plan' "
        "estimates it; 'opdkit verl-config' prints the multi-GPU launch).",
        "maj@16 as verl logs it is a bootstrap (eval's bootstrap_maj@16; opdkit also reports the exact "
        "maj@16); which step the paper's numbers come from (last or best) is not stated.",
    ]
    if method in _NOTES:
        notes.append(_NOTES[method])
    else:
        notes.append("SDPO family: lr 1e-5 (the SDPO reference's; the paper omits it), max response 2048.")
    if task == "tooluse":
        notes.append(
            "Tool use: bring the 4,046-row ToolAlpaca training file (lasgroup/SDPO datasets/tooluse/"
            "train.json): put it at <benchmarks>/tooluse/train.json or set "
            "data.train=tooluse:train@/path/to/train.json."
        )
        notes.append(
            "The reference's tool-call regexes (compat_regex); remove data.verifier_options for opdkit's "
            "parser, which also reads nested inputs and bracketed names (2 more test rows reachable)."
        )
        if _METHODS[method][0]["name"] in _FEEDBACK_METHODS:
            notes.append("The self-teacher sees the verifier's mismatch feedback when no sibling succeeded.")
    return tuple(notes)


def sc_sdpo_presets() -> Iterator[Preset]:
    """SC-SDPO Table 1: every method × task for Qwen3-8B, and the OLMo-3-7B-Instruct rows."""
    for prefix, model, label, table in (
        ("paper", "Qwen/Qwen3-8B", "Qwen3-8B", QWEN_TABLE),
        ("paper/olmo", "allenai/Olmo-3-7B-Instruct", "OLMo-3-7B-Instruct", OLMO_TABLE),
    ):
        for method, (row_label, cells) in _parse_table(table).items():
            for i, (task, (_, _, column)) in enumerate(TASKS.items()):
                yield Preset(
                    name=f"{prefix}/{task}/{method}",
                    paper_row=f"{SC_SDPO}, {label}, row '{row_label}', column {column}",
                    reported=f"mean@16 / maj@16 = {_pair(cells[i])} (table average {_pair(cells[5])}; "
                    f"untrained {label} {_pair(BASE_NUMBERS[label].split()[i])})",
                    notes=_sc_sdpo_notes(task, method),
                    config=_sc_sdpo_config(model, task, method),
                )


SCOPE_BENCHMARKS = "AIME24, AIME25, AMC23, MATH500, Minerva, OlympiadBench, Avg"
SCOPE_NUMBERS = "42.7/77.9 30.4/50.9 80.9/97.2 89.8/97.9 37.8/55.1 49.7/70.9 55.2/75.0"
# row -> (paper row, reported numbers, method section, extra notes)
_SCOPE_ROWS: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    "scope": (
        "SCOPE (main results)",
        f"Avg@32 / Pass@32 on {SCOPE_BENCHMARKS}: {SCOPE_NUMBERS.replace(' ', '; ')}",
        {"name": "scope", "tau": 1.0, "sign_preset": "paper", "normalization": "mean1", "agg": "code"},
        (),
    ),
    "opd": (
        "OPD baseline (SCOPE's stack with the dual path off)",
        "Avg@32 / Pass@32 average 52.3 / 73.1 (a secondary summary; per benchmark not given; SCOPE's "
        "relative gains over it in the paper's README: "
        "+6.22%, +5.19%, +6.59%, +0.90%, +8.31%, +10.69% in the order above)",
        {"name": "opd"},
        (),
    ),
    "grpo": (
        "GRPO baseline (n = 8, std-normalised advantage, lr 5e-5, no teacher)",
        "not given",
        {"name": "grpo", "clip_high": 0.2, "agg": "token-mean"},
        ("No teacher: the teacher notes below do not apply.",),
    ),
    "scope_no_weights": (
        "ablation 'without the weighting' (unweighted dual path), Fig. 5",
        "AIME25 Pass@32 45.7 (SCOPE 50.9), from a secondary summary of Fig. 5; the other numbers not given",
        {"name": "scope", "use_seq_weights": False},
        (),
    ),
    "scope_reversed_teacher": (
        "ablation 'reversed teacher-weight direction', Fig. 5",
        "AIME24 Avg@32 38.6 (SCOPE 42.7), from a secondary summary of Fig. 5; the other numbers not given",
        {"name": "scope", "teacher_exponent": 1.0},
        (),
    ),
    "scope_no_student_weights": (
        "ablation 'without the student weights', Fig. 5",
        "AIME24 Pass@32 74.1 (SCOPE 77.9), from a secondary summary of Fig. 5; the other numbers not given",
        {"name": "scope", "use_student_weights": False},
        (),
    ),
    "scope_released_scripts": (
        "SCOPE with the released scripts' exponent signs (student path inverted), a parity run",
        "not given (the paper states the method with the paper's signs, preset paper/math/scope)",
        {"name": "scope", "sign_preset": "released_scripts"},
        (),
    ),
}
_SCOPE_PAIRS = {  # prefix -> (student, teacher, pair label, rows)
    "paper/math": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Skywork/Skywork-OR1-7B",
        "Skywork-OR1-7B -> DeepSeek-R1-Distill-Qwen-1.5B", tuple(_SCOPE_ROWS),
    ),
    "paper/math_qwen3": (
        "Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-8B", "Qwen3-8B -> Qwen3-1.7B-Base", ("scope", "opd"),
    ),
}  # fmt: skip


def _scope_config(student: str, method: dict[str, Any]) -> dict[str, Any]:
    config = {
        "seed": 0, "steps": 200, "checkpoint_every": 25,
        "model": {"student": student, "dtype": "bfloat16"},
        "data": {"train": "deepmath.parquet", "eval": "math500", "max_prompt_tokens": 2048},
        "rollout": {"prompts_per_step": 256, "n": 8, "temperature": 0.6, "max_new_tokens": 12288},
        "optim": {"lr": 5.0e-5, "weight_decay": 0.01, "grad_clip": 1.0, "mini_batches": 1,
                  "micro_batch_size": 4},
        "teacher": {"kind": "server", "url": "http://127.0.0.1:8000", "temperature": 1.0},
        "method": dict(method),
        "eval": {"every": 25, "k": 32, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768},
    }  # fmt: skip
    if method["name"] == "grpo":  # no teacher
        del config["teacher"]
    return config


def scope_presets() -> Iterator[Preset]:
    """SCOPE's math setting: its main row, baselines and ablations (Skywork pair), SCOPE/OPD (Qwen3 pair)."""
    for prefix, (student, teacher, pair, rows) in _SCOPE_PAIRS.items():
        for row in rows:
            paper_row, reported, method, extra = _SCOPE_ROWS[row]
            if prefix != "paper/math":
                reported = "not given (SCOPE: +6.21% Avg@32 / +4.83% Pass@32 relative to OPD)"
            notes = (
                f"Setting: {pair}; 256 DeepMath prompts × 8 rollouts at T = 0.6, lr 5e-5, on-policy "
                "(one update per step); the teacher served at T = 1 by vLLM or 'opdkit serve-teacher'.",
                f"Set data.train to your DeepMath file (verl or TRL schema) and teacher.url to the server "
                f"running {teacher}; evaluate every benchmark with 'opdkit eval --k 32'.",
                "Pass@32 in the paper is the bootstrap best@32 (eval's bootstrap_best@32), not the unbiased "
                "pass@k.",
                "method.loss_averaging=microbatch reproduces the released code's per-micro-batch means.",
                *extra,
            )
            yield Preset(f"{prefix}/{row}", f"{SCOPE}, {pair}, {paper_row}", reported, notes,
                         _scope_config(student, method))  # fmt: skip


ALIASES = {  # short name -> the row it repeats (the presets of earlier releases)
    **{f"paper/{m}": f"paper/chemistry/{m}" for m in _METHODS},
    "paper/scope": "paper/math/scope",
    "paper/opd": "paper/math/opd",
}


def all_presets() -> list[Preset]:
    """Every generated preset, aliases last."""
    presets = [*sc_sdpo_presets(), *scope_presets()]
    by_name = {p.name: p for p in presets}
    for alias, target in ALIASES.items():
        p = by_name[target]
        note = f"The same as {target} (its short name)."
        presets.append(Preset(alias, p.paper_row, p.reported, (note, *p.notes), copy.deepcopy(p.config)))
    return presets


def rendered() -> dict[Path, str]:
    """Path under ``configs/`` -> file text, for every preset."""
    return {PAPER_DIR.parent / f"{p.name}.yaml": p.render() for p in all_presets()}


def write_presets() -> list[Path]:
    """(Re)write every generated preset and delete stale ones under ``configs/paper``; returns the paths."""
    files = rendered()
    for stale in set(PAPER_DIR.rglob("*.yaml")) - set(files):
        stale.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(files)


if __name__ == "__main__":
    for written in write_presets():
        print(written)


def reproduction_table() -> str:
    """The README's reproduction table (Markdown): one line per paper row, its presets and numbers."""
    lines = [
        "| paper row | preset | command | paper's number | run by opdkit |",
        "|---|---|---|---|---|",
    ]
    tasks = "{" + ",".join(TASKS) + "}"
    for prefix, label, table in (
        ("paper", "Qwen3-8B", QWEN_TABLE),
        ("paper/olmo", "OLMo-3-7B-Instruct", OLMO_TABLE),
    ):
        for method, (row_label, cells) in _parse_table(table).items():
            numbers = " · ".join(f"{col} {cell}" for (_, _, col), cell in zip(TASKS.values(), cells))
            lines.append(
                f"| SC-SDPO Table 1, {label}, {row_label} | `{prefix}/{tasks}/{method}` | "
                f"`opdkit train {prefix}/chemistry/{method}` | mean@16/maj@16 {numbers} · Avg {cells[5]} | "
                "no: CPU toy runs only |"
            )
    for prefix, (_, _, pair, _rows) in _SCOPE_PAIRS.items():
        for preset in (p for p in scope_presets() if p.name.startswith(prefix + "/")):
            row = preset.paper_row.removeprefix(f"{SCOPE}, {pair}, ")
            command = f"opdkit train {preset.name} data.train=..."
            command += " teacher.url=..." if "teacher" in preset.config else ""
            lines.append(
                f"| SCOPE, {pair}, {row} | `{preset.name}` | `{command}` | {preset.reported} "
                "| no: CPU toy runs only |"
            )
    return "\n".join(lines) + "\n"
