"""A local external teacher: a Hugging Face causal LM in this process, scoring the student's tokens.

Equivalent to SCOPE's vLLM teacher request (§5.1: prompt ⊕ response, echo, keep the last |y|
prompt log-probs) without the network: one no-grad forward per batch of rows. The teacher must use the
student's tokenizer (checked by ``check_tokenizer``: ids are passed as they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from opdkit.core.sequence import left_pad, pack, response_logits, right_pad, token_logp
from opdkit.teachers.base import TEACHERS, TeacherScores, tokenizer_mismatch


class LocalTeacher:
    """Scores with ``model`` (eval mode, no grad) at ``temperature``, ``batch_size`` rows per forward."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, *, temperature: float = 1.0, batch_size: int = 16
    ):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.batch_size = batch_size

    @classmethod
    def from_path(
        cls, path: str, *, device: str = "cpu", dtype: str = "float32", **kwargs: Any
    ) -> LocalTeacher:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    def check_tokenizer(self, tokenizer: Any) -> None:
        problem = tokenizer_mismatch(tokenizer, self.tokenizer)
        if problem is not None:
            raise ValueError(f"the local teacher's tokenizer does not match the student's: {problem}")

    @torch.no_grad()
    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        top_k: int = 0,
        pad_to: int | None = None,
    ) -> TeacherScores:
        width = pad_to if pad_to is not None else max((len(r) for r in response_ids), default=0)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        logp_N_T = torch.zeros(len(prompt_ids), width)
        topk_ids, topk_logp = [], []
        for start in range(0, len(prompt_ids), self.batch_size):
            rows = slice(start, start + self.batch_size)
            p_ids, p_mask = left_pad([list(r) for r in prompt_ids[rows]], pad)
            r_ids, r_mask = right_pad([list(r) for r in response_ids[rows]], pad, width)
            packed = pack(p_ids.to(device), p_mask.to(device), r_ids.to(device), r_mask.to(device))
            logits = response_logits(self.model(**packed.model_inputs()).logits, packed).float()
            logits = logits / self.temperature
            logp = token_logp(logits, packed.input_ids[:, packed.prompt_len :]).cpu()
            logp_N_T[rows] = torch.where(r_mask.bool(), logp, torch.zeros_like(logp))
            if top_k > 0:
                top = torch.log_softmax(logits, dim=-1).topk(top_k, dim=-1)
                topk_ids.append(top.indices.cpu())
                topk_logp.append(top.values.cpu())
        return TeacherScores(
            logp_N_T=logp_N_T,
            valid_N=torch.ones(len(prompt_ids), dtype=torch.bool),
            topk_ids_N_T_K=torch.cat(topk_ids) if topk_ids else None,
            topk_logp_N_T_K=torch.cat(topk_logp) if topk_logp else None,
            stats={"teacher/failed_rows": 0.0},
        )


@TEACHERS.register("local")
def make_local_teacher(
    *, path: str, device: str = "cpu", temperature: float = 1.0, dtype: str = "float32"
) -> LocalTeacher:
    """Factory for ``teacher.kind=local``: loads ``path`` with transformers, its weights in ``dtype`` (the
    run's compute dtype: a frozen teacher needs no float32 master copy)."""
    if not path:
        raise ValueError("teacher.kind=local needs teacher.path (a Hugging Face model directory)")
    return LocalTeacher.from_path(path, device=device, temperature=temperature, dtype=dtype)
