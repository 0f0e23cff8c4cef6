"""The scoring engine: one padded no-grad forward over several token rows, per-token log-probs and top-k.

For a row ``ids`` of length L the logits at index j predict token j+1 (§0, logit alignment), so
the engine returns, for positions j = 1..L-1, ``log softmax(logits[j-1])[ids[j]]``, the token's rank in that
distribution and the K most likely tokens. With ``generate`` it also picks one next token from ``logits[L-1]``
(sampled at the request's temperature, greedy at 0) and scores it the same way, as vLLM does for
``max_tokens=1``. Log-probs are those of the raw model (temperature 1, vLLM's default ``raw_logprobs`` mode)
unless the row asks for ``logprob_temperature`` (an opdkit extension): then ``logits / T`` are normalised.

Rows are right-padded into one (B, L_max) batch with an attention mask and explicit position ids 0..L-1; under
a causal mask a real token never sees the padding after it, so each row's scores equal those of an unbatched
forward (tests/serve check this to 1e-5 in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class RowRequest:
    """One row to score: ``top_k`` alternatives per position; ``seed`` fixes the generated token."""

    ids: tuple[int, ...]
    top_k: int = 0
    generate: bool = False
    temperature: float = 1.0
    logprob_temperature: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class RowScores:
    """Scores of ``token_ids`` = ids[1:] (+ the generated token): one entry per scored position, M in all.

    logp_M: log-prob of each token; rank_M: 1-based rank of the token in its distribution;
    topk_ids_M_K / topk_logp_M_K: the K most likely tokens at each position, most likely first.
    """

    token_ids: list[int]
    logp_M: list[float]
    rank_M: list[int]
    topk_ids_M_K: list[list[int]]
    topk_logp_M_K: list[list[float]]


@dataclass(frozen=True)
class EngineInfo:
    """What the HTTP layer needs to validate requests."""

    vocab_size: int
    max_model_len: int


class ScoringEngine:
    """Wraps a Hugging Face causal LM and its tokenizer; ``score_rows`` is the only compute entry point."""

    def __init__(self, model: Any, tokenizer: Any, *, max_model_len: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        config_len = getattr(model.config, "max_position_embeddings", None) or 2048
        self.info = EngineInfo(
            vocab_size=int(model.get_input_embeddings().weight.shape[0]),
            max_model_len=int(max_model_len or config_len),
        )
        self._decoded: dict[int, str] = {}
        self._generator = torch.Generator().manual_seed(0)
        self.forward_passes = 0
        self.rows_scored = 0
        self.max_rows_per_forward = 0

    @classmethod
    def from_pretrained(
        cls, path: str, *, device: str = "cpu", dtype: str = "float32", max_model_len: int | None = None
    ) -> ScoringEngine:
        """Load a model directory (or hub id) with transformers; ``dtype``: float32, bfloat16 or float16."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype]).to(device)
        return cls(model, tokenizer, max_model_len=max_model_len)

    def decode_token(self, token_id: int) -> str:
        """The text of one token (cached: responses repeat the same ids many times)."""
        text = self._decoded.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._decoded[token_id] = text
        return text

    def decode(self, ids: list[int]) -> str:
        """The text of a token sequence, special tokens included."""
        return self.tokenizer.decode(ids)

    @torch.inference_mode()
    def score_rows(self, rows: Sequence[RowRequest]) -> list[RowScores]:
        """Score every row in one right-padded forward pass (see the module docstring)."""
        lengths = [len(r.ids) for r in rows]
        ids_B_L = torch.zeros(len(rows), max(lengths), dtype=torch.long)
        mask_B_L = torch.zeros_like(ids_B_L)
        for i, row in enumerate(rows):
            ids_B_L[i, : lengths[i]] = torch.tensor(row.ids)
            mask_B_L[i, : lengths[i]] = 1
        # Right padding: positions 0..L-1 are correct for every row, pad positions are never attended to.
        pos_B_L = torch.arange(ids_B_L.shape[1]).expand_as(ids_B_L)
        logits_B_L_V = self.model(
            input_ids=ids_B_L.to(self.device),
            attention_mask=mask_B_L.to(self.device),
            position_ids=pos_B_L.to(self.device),
        ).logits
        self.forward_passes += 1
        self.rows_scored += len(rows)
        self.max_rows_per_forward = max(self.max_rows_per_forward, len(rows))
        return [self._score_one(row, logits_B_L_V[i, : lengths[i]]) for i, row in enumerate(rows)]

    def _score_one(self, row: RowRequest, logits_L_V: torch.Tensor) -> RowScores:
        logits_L_V = logits_L_V.float()
        targets = list(row.ids[1:])
        if row.generate:  # picked from the raw logits at the sampling temperature, before any rescaling
            targets.append(self._pick_next(logits_L_V[-1], row))
        if row.logprob_temperature != 1.0:
            logits_L_V = logits_L_V / row.logprob_temperature
        logp_L_V = torch.log_softmax(logits_L_V, dim=-1)
        scored_M_V = logp_L_V if row.generate else logp_L_V[:-1]
        target_M = torch.tensor(targets, dtype=torch.long, device=scored_M_V.device)
        logp_M = scored_M_V.gather(-1, target_M[:, None]).squeeze(-1)
        if not torch.isfinite(logp_M).all():
            raise FloatingPointError("the model produced non-finite log-probs")
        # Rank as vLLM counts it: the number of tokens at least as likely as the scored one.
        rank_M = (scored_M_V >= logp_M[:, None]).sum(-1)
        top_logp_M_K, top_ids_M_K = scored_M_V.topk(row.top_k, dim=-1)
        return RowScores(
            token_ids=targets,
            logp_M=logp_M.tolist(),
            rank_M=rank_M.tolist(),
            topk_ids_M_K=top_ids_M_K.tolist(),
            topk_logp_M_K=top_logp_M_K.tolist(),
        )

    def _pick_next(self, logits_V: torch.Tensor, row: RowRequest) -> int:
        """The token a ``max_tokens=1`` request generates: greedy at temperature 0, else sampled."""
        if row.temperature == 0:
            return int(logits_V.argmax())
        probs_V = torch.softmax(logits_V.float().cpu() / row.temperature, dim=-1)
        generator = torch.Generator().manual_seed(row.seed) if row.seed is not None else self._generator
        return int(torch.multinomial(probs_V, 1, generator=generator))
