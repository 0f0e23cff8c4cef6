"""verl plugin entry point (pyproject: ``[project.entry-points."verl.plugins"]``, ``opdkit = THIS MODULE``).

verl 0.9.1 runs ``importlib.metadata.entry_points(group="verl.plugins")`` at the end of ``verl/__init__.py``
and ``load()``s each one, so importing this module happens in every process that imports verl: the driver,
the TaskRunner actor and every Ray worker. ``VERL_USE_EXTERNAL_PLUGINS=none`` turns discovery off,
``=opdkit`` loads only this plugin. verl swallows a plugin's import error at DEBUG level, so a broken install
looks like "unknown estimator"; this shows what registered::

    python -c "import verl, opdkit.integrations.verl.plugin as p; print(p.REGISTERED)"

Importing registers:
- advantage estimators ``opdkit_grpo``, ``opdkit_sc_grpo`` (``estimators.py``);
- distillation losses ``opdkit_scope``, ``opdkit_sc_k1/k2/k3``, ``opdkit_sc_forward_kl_topk`` (``losses.py``);
- the trainers ``opdkit_sync`` (``trainer.py``) and ``opdkit_sdpo`` (``sdpo_trainer.py``: the SDPO family),
  when verl's V1 trainer imports (it needs TransferQueue, verl's ``verl-core`` extra); otherwise a warning
  says why and the rest still registers.
"""

from __future__ import annotations

import logging

from opdkit.integrations.verl import estimators, losses

logger = logging.getLogger(__name__)

REGISTERED: dict[str, list[str]] = {
    "adv_estimator": ["opdkit_grpo", "opdkit_sc_grpo"],
    "distillation_loss": ["opdkit_scope", *losses.SC_ESTIMATORS, "opdkit_sc_forward_kl_topk"],
    "trainer": [],
}

try:
    from opdkit.integrations.verl import sdpo_trainer, trainer  # noqa: F401  (register opdkit_sync, opdkit_sdpo)

    REGISTERED["trainer"].extend(["opdkit_sdpo", "opdkit_sync"])
except ImportError as exc:  # no TransferQueue: the estimators and losses still work with verl's trainers
    logger.warning(
        "opdkit: trainers 'opdkit_sync', 'opdkit_sdpo' not registered (%s); install opdkit[verl]", exc
    )

__all__ = ["REGISTERED", "estimators", "losses"]
