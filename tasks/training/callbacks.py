"""Training progress for the Prefect UI: a Lightning callback and a monotone reporter.

`ProgressCallback` reports a share of a fraction range every ~5 % of the steps, rate-
limited (each report is a log line and an API call to the Prefect server, which shares
the cores with training); `monotone` keeps a cell's progress from going backwards when
a fresh restart begins its step count again.

Example:
    >>> report = monotone(lambda fraction, message: print(f"{fraction:.0%} {message}"))
    >>> callback = ProgressCallback(report, 0.05, 0.6, "patchcore/demo_grid fit")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class ProgressCallback(Callback):
    """Report training progress (a share of [start, end]) every ~5% of the steps, at most
    every `min_seconds` (each report is a log line and an API call to the Prefect server,
    which shares the cores with training), and at the last step."""

    def __init__(
        self, report: Progress, start: float, end: float, label: str, min_seconds: float = 3.0
    ) -> None:
        self.report, self.start, self.end, self.label = report, start, end, label
        self.min_seconds = min_seconds
        self._last = -float("inf")

    def __getstate__(self) -> dict:
        # anomalib's torch export pickles the module, which reaches the trainer's callbacks;
        # the progress function is a closure (it updates a Prefect artifact): leave it out
        return {**self.__dict__, "report": None}

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        del pl_module, outputs, batch, batch_idx
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.num_training_batches
        step = trainer.global_step
        now = time.monotonic()
        due = step % max(1, int(total) // 20) == 0 and now - self._last >= self.min_seconds
        if due or step == total:
            self._last = now
            share = min(1.0, step / max(1, total))
            self.report(
                self.start + share * (self.end - self.start), f"{self.label}: step {step}/{total}"
            )


def monotone(progress: Progress | None) -> Progress:
    """Progress that never goes backwards (a retry restarts the step count)."""
    highest = [0.0]

    def report(fraction: float, message: str) -> None:
        highest[0] = max(highest[0], fraction)
        logger.info("%3.0f%% %s", 100 * highest[0], message)
        if progress is not None:
            progress(highest[0], message)

    return report
