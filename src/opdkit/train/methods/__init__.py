"""The methods registry: every method of the papers, chosen by name.

``METHODS.get(name)`` returns the method object; ``METHODS.get(name).config_type`` its config section.

| name | what it trains with |
|---|---|
| grpo, grpo_no_std | group-normalised (or only centred) outcome advantage, PPO clip |
| opd | per-token reverse-KL advantage from an external teacher |
| scope | correct rollouts: PPL_S-weighted MLE; wrong ones: PPL_T-weighted OPD |
| sdpo | self-distillation from the EMA self-teacher with a successful sibling in context |
| sc_sdpo | SDPO × (p(1−p))^α per question, mean 1 over informative questions |
| sdpo_hard_filter, sdpo_paced | SDPO with 1[0<p<1] / frozen offline p0(1−p0) question weights |
| srpo | failed-with-correct-sibling rows to entropy-weighted SDPO, the rest to GRPO |
"""

from __future__ import annotations

from opdkit.core.registry import Registry
from opdkit.train.methods import policy, scope, sdpo, srpo
from opdkit.train.methods.base import Method, MethodConfig, MethodContext

METHODS: Registry[Method] = Registry("method")
for _module in (policy, scope, sdpo, srpo):
    _module.register(METHODS)

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext"]
