"""The scoring engine and the batcher in-process: padded batches score exactly like unbatched forwards."""

from __future__ import annotations

import asyncio

import torch

from lm_fixtures import local_logprobs
from opdkit.serve.batcher import Batcher
from opdkit.serve.engine import RowRequest, ScoringEngine

ROWS = [
    (1, 4, 5, 6, 7, 8),
    (1, 9),
    (1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19),
    (1, 20, 21),
]


def _engine(tiny_lm) -> ScoringEngine:
    model, tokenizer = tiny_lm
    return ScoringEngine(model, tokenizer)


def _check_against_local(model, row: RowRequest, got) -> None:
    """Scores of ids[1:] equal an unpadded local forward to 1e-5; top-k and ranks agree."""
    logp_L_V = local_logprobs(model, list(row.ids))[:-1]  # row j predicts token j+1
    target_M = torch.tensor(row.ids[1:])
    want_M = logp_L_V.gather(-1, target_M[:, None]).squeeze(-1)
    assert got.token_ids == list(row.ids[1:])
    assert torch.allclose(torch.tensor(got.logp_M), want_M, atol=1e-5, rtol=0)
    top_logp, top_ids = logp_L_V.topk(row.top_k, dim=-1)
    assert got.topk_ids_M_K == top_ids.tolist()
    assert torch.allclose(torch.tensor(got.topk_logp_M_K), top_logp, atol=1e-5, rtol=0)
    # rank = number of vocabulary entries at least as likely as the scored token (1 = most likely)
    want_rank = (logp_L_V >= want_M[:, None]).sum(-1)
    assert got.rank_M == want_rank.tolist()


def test_padded_batch_equals_unbatched_forward(tiny_lm):
    engine = _engine(tiny_lm)
    rows = [RowRequest(ids=ids, top_k=3) for ids in ROWS]
    batched = engine.score_rows(rows)  # one right-padded (4, 11) forward
    assert engine.forward_passes == 1 and engine.max_rows_per_forward == 4
    for row, got in zip(rows, batched):
        _check_against_local(tiny_lm[0], row, got)
        alone = engine.score_rows([row])[0]
        assert max(abs(a - b) for a, b in zip(alone.logp_M, got.logp_M)) <= 1e-5


def test_generated_token_is_greedy_at_temperature_zero(tiny_lm):
    engine = _engine(tiny_lm)
    row = RowRequest(ids=ROWS[0], top_k=2, generate=True, temperature=0.0)
    got = engine.score_rows([row])[0]
    last_V = local_logprobs(tiny_lm[0], list(row.ids))[-1]
    assert len(got.token_ids) == len(row.ids)  # ids[1:] plus the generated token
    assert got.token_ids[-1] == int(last_V.argmax())
    assert abs(got.logp_M[-1] - float(last_V.max())) <= 1e-5
    assert got.rank_M[-1] == 1


def test_seeded_sampling_is_reproducible(tiny_lm):
    engine = _engine(tiny_lm)
    rows = [RowRequest(ids=ROWS[2], generate=True, temperature=1.0, seed=s) for s in (7, 7, 8)]
    tokens = [engine.score_rows([r])[0].token_ids[-1] for r in rows]
    assert tokens[0] == tokens[1]


def test_logprob_temperature_rescales_logits(tiny_lm):
    engine = _engine(tiny_lm)
    row = RowRequest(ids=ROWS[0], logprob_temperature=0.5)
    got = engine.score_rows([row])[0]
    want = local_logprobs(tiny_lm[0], list(row.ids), temperature=0.5)[:-1]
    want_M = want.gather(-1, torch.tensor(row.ids[1:])[:, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(got.logp_M), want_M, atol=1e-5, rtol=0)


def test_batcher_groups_rows_within_the_token_budget(tiny_lm):
    engine = _engine(tiny_lm)
    # Lengths 6, 2, 11, 3 with a budget of 24 padded tokens, first come first served:
    #   [6, 2]: 2 rows * 6 = 12 <= 24; adding 11 would give 3 * 11 = 33 > 24, so the first forward has 2 rows;
    #   [11, 3]: 2 * 11 = 22 <= 24, the second forward takes the other two.
    batcher = Batcher(engine, max_batch_tokens=24)
    rows = [RowRequest(ids=ids, top_k=1) for ids in ROWS]

    async def main():
        task = asyncio.create_task(batcher.run())
        try:
            return await batcher.score(rows)
        finally:
            task.cancel()

    results = asyncio.run(main())
    batcher.close()
    assert engine.forward_passes == 2 and engine.max_rows_per_forward == 2
    for row, got in zip(rows, results):
        _check_against_local(tiny_lm[0], row, got)


def test_batcher_max_rows_one_disables_batching(tiny_lm):
    engine = _engine(tiny_lm)
    batcher = Batcher(engine, max_batch_tokens=10_000, max_batch_rows=1)

    async def main():
        task = asyncio.create_task(batcher.run())
        try:
            return await asyncio.gather(*(batcher.score([RowRequest(ids=ids)]) for ids in ROWS))
        finally:
            task.cancel()

    asyncio.run(main())
    batcher.close()
    assert engine.forward_passes == len(ROWS) and engine.max_rows_per_forward == 1


def test_failed_forward_fails_its_requests_and_the_batcher_goes_on(tiny_lm):
    import copy

    model = copy.deepcopy(tiny_lm[0])
    engine = ScoringEngine(model, tiny_lm[1])
    batcher = Batcher(engine, max_batch_tokens=1000)
    head = model.get_output_embeddings().weight
    saved = head.data.clone()

    async def main():
        task = asyncio.create_task(batcher.run())
        try:
            head.data[5] = float("nan")  # every distribution becomes NaN: the forward's rows must fail
            failure = None
            try:
                await batcher.score([RowRequest(ids=ROWS[0])])
            except FloatingPointError as exc:
                failure = exc
            head.data.copy_(saved)
            return failure, await batcher.score([RowRequest(ids=ROWS[1])])
        finally:
            task.cancel()

    failure, (after,) = asyncio.run(main())
    batcher.close()
    assert isinstance(failure, FloatingPointError) and "non-finite" in str(failure)
    _check_against_local(tiny_lm[0], RowRequest(ids=ROWS[1]), after)
