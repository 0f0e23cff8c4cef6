"""opdkit: on-policy distillation and self-distillation for post-training language models.

Implements SCOPE (arXiv 2604.10688), SC-SDPO (arXiv 2605.27765) and every baseline they compare with
(GRPO, GRPO without std normalisation, OPD, SDPO, SDPO+PACED, SDPO+hard filter, SRPO).

Layers (imports point downward only; import-linter enforces it):

    L3  cli, integrations.verl
    L2  train, eval, serve
    L1  rollout, teachers, rewards, data, tasks, models
    L0  core, metrics          (pure functions over tensors: torch, numpy, stdlib)

``import opdkit`` only defines names; heavy libraries are imported by the modules that need them.

Section references in comments and docstrings (``§5.4``, ``§11 A8``) point at ``docs/algorithms.md``;
``docs/architecture.md`` lists where each formula is implemented and tested.
"""

__version__ = "0.1.0"
