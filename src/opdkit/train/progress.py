"""The command line's progress bar: step, reward, pass rate, loss and ETA (rich)."""

from __future__ import annotations

from typing import Any


class StepProgress:
    """A rich progress bar updated with each logged metrics row; a context manager.

    The bar is drawn from the first logged step on, so an error before it (config, run directory, preflight)
    stays the only line the user sees."""

    def __init__(self, total_steps: int, title: str = "training") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "reward {task.fields[reward]}  pass {task.fields[pass_rate]}  loss {task.fields[loss]}"
            ),
            TimeRemainingColumn(),
        )
        self._task = self._progress.add_task(title, total=total_steps, reward="-", pass_rate="-", loss="-")

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def update(self, step: int, row: dict[str, Any]) -> None:
        def fmt(key: str) -> str:
            value = row.get(key)
            return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

        self._progress.start()  # no-op once started
        self._progress.update(
            self._task, completed=step, reward=fmt("reward/mean"), pass_rate=fmt("pass_rate/mean"),
            loss=fmt("loss/total"),
        )  # fmt: skip
