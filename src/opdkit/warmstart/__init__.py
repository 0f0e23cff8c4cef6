"""The warm start: supervised training of a strong tiny teacher and a 20-50 % student, cached by job hash.

Modules, each importing only those after it: ``cache`` (``warm_start``: the cache around a run) > ``run`` (the
training run) > ``config`` (``WarmStartConfig``, ``WarmStartJob``, the problem split, the report) >
``prompts`` (the prompt formats) | ``sft`` (the supervised step). ``opdkit.train`` uses it for
``model.student: tiny``; nothing here imports ``opdkit.train``.

    from opdkit.warmstart import WarmStartJob, warm_start
    result = warm_start(WarmStartJob())          # the default: 2-digit addition, the demo's pair
    result.student_path, result.teacher_path, result.report.student_pass_rate
"""

from opdkit.warmstart.cache import WarmStartResult, remove_stale_temporaries, warm_start
from opdkit.warmstart.config import (
    DEFAULT_CACHE_DIR,
    WARMSTART_VERSION,
    CurriculumConfig,
    FormatMix,
    OptimConfig,
    ProbeConfig,
    WarmStartConfig,
    WarmStartJob,
    WarmStartProblems,
    WarmStartReport,
    warm_start_problems,
)

__all__ = [
    "DEFAULT_CACHE_DIR", "WARMSTART_VERSION", "CurriculumConfig", "FormatMix", "OptimConfig", "ProbeConfig",
    "WarmStartConfig", "WarmStartJob", "WarmStartProblems", "WarmStartReport", "WarmStartResult",
    "remove_stale_temporaries", "warm_start", "warm_start_problems",
]  # fmt: skip
