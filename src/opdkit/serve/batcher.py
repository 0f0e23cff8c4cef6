"""Dynamic batching: rows of concurrent requests share padded forward passes up to a token budget.

Request handlers call ``await batcher.score(rows)``. A single background task takes pending rows first come,
first served, and groups them while ``rows * longest_row <= max_batch_tokens`` (the padded size of the batch)
and ``rows <= max_batch_rows``; the forward runs on one worker thread, so the event loop keeps accepting
requests meanwhile, and those requests form the next batch. A row alone always fits, because the HTTP layer
rejects rows longer than the budget. If a forward of several rows raises, each row is forwarded again alone,
so a row that fails (whatever the reason) fails only its own request and the others in the batch are scored;
the task goes on either way.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from opdkit.serve.engine import RowRequest, RowScores, ScoringEngine


@dataclass
class _Job:
    row: RowRequest
    future: asyncio.Future[RowScores]


class Batcher:
    """Owns the engine: nothing else may call ``engine.score_rows`` while ``run`` is active."""

    def __init__(self, engine: ScoringEngine, *, max_batch_tokens: int, max_batch_rows: int = 256) -> None:
        if max_batch_tokens < 1 or max_batch_rows < 1:
            raise ValueError("max_batch_tokens and max_batch_rows must be positive")
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self._pending: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opdkit-forward")
        self.isolated_batches = 0  # forwards of several rows that failed and were retried row by row

    async def score(self, rows: list[RowRequest]) -> list[RowScores]:
        """Queue ``rows`` and wait for their scores (in order)."""
        loop = asyncio.get_running_loop()
        jobs = [_Job(row, loop.create_future()) for row in rows]
        self._pending.extend(jobs)
        self._wakeup.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    def _take_batch(self) -> list[_Job]:
        batch = [self._pending.popleft()]
        longest = len(batch[0].row.ids)
        while self._pending and len(batch) < self.max_batch_rows:
            longest_if_added = max(longest, len(self._pending[0].row.ids))
            if (len(batch) + 1) * longest_if_added > self.max_batch_tokens:
                break
            batch.append(self._pending.popleft())
            longest = longest_if_added
        return batch

    async def run(self) -> None:
        """The background task: forward batches until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = [job for job in self._take_batch() if not job.future.done()]  # skip cancelled ones
                if batch:
                    await self._forward(batch)

    async def _forward(self, batch: list[_Job]) -> None:
        """Score ``batch`` in one forward; if that raises, score each row alone (one bad row fails alone)."""
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self.engine.score_rows, [job.row for job in batch]
            )
        except Exception as exc:  # a failed forward fails its requests, never the server
            if len(batch) > 1:
                self.isolated_batches += 1
                for job in batch:
                    await self._forward([job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(result)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
