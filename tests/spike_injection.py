"""Test-only training perturbations, added through `train_and_evaluate(callbacks=...)`."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)

# An Adam learning rate 1000x too high: a real divergence, not a faked loss value.
INJECTED_LR_FACTOR = 1000.0


class LearningRateBlowUp(Callback):
    """Inject a real divergence: multiply the learning rate by `factor` from optimizer
    step `at_step` (1-based) on. The loss shows it from step `at_step + 1`. It fires once
    per instance, so a rollback that restores the optimizer also undoes it."""

    def __init__(self, at_step: int, factor: float = INJECTED_LR_FACTOR) -> None:
        self.at_step = at_step
        self.factor = factor
        self.done = False

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        del pl_module, batch, batch_idx
        if not self.done and trainer.global_step + 1 >= self.at_step:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= self.factor
            self.done = True
            logger.info("injected spike: learning rate x%g at step %d", self.factor, self.at_step)


class NegatedScores(Callback):
    """A broken model: every validation and test score and anomaly map negated."""

    def _negate(self, outputs: Any) -> None:
        outputs.pred_score = -outputs.pred_score
        outputs.anomaly_map = -outputs.anomaly_map

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl=0):  # noqa: D102
        self._negate(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl=0):  # noqa: D102
        self._negate(outputs)
