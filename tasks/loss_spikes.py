"""Loss-spike detection for gradient training (EfficientAD's student and autoencoder).

`LossSpikeDetector` is pure logic: feed it `(step, name, value)` and it answers with a
`LossSpike` when a loss is not finite (at once) or jumps far above its recent history.
A jump is judged on the log-loss against a rolling window of earlier steps, with the
median as centre and the median absolute deviation (MAD) as scale, which a single
outlier cannot drag (Hampel filter; Hampel 1974, "The influence curve and its role in
robust estimation"). A step is a spike when its robust z-score exceeds `robust_z` or the
loss exceeds `ratio` times the rolling median. Only upward jumps count: a falling loss
is what training is for.

`LossSpikeCallback` wires the detector into Lightning: it records every training step's
logged losses (EfficientAD logs `train_st`, `train_ae`, `train_stae`, `train_loss`) and
stops the attempt at the first spike, so the caller can retrain.

Example:
    >>> from tasks.profiles import SpikeSettings
    >>> detector = LossSpikeDetector(SpikeSettings(window=10, warmup_steps=5))
    >>> events = [detector.update(step, "train_loss", v) for step, v in
    ...           enumerate([1.0, 0.98, 0.97, 0.99, 0.96, 0.95, 40.0])]
    >>> events[-1].step, events[-1].reason
    (6, 'robust_z')
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from tasks.profiles import SpikeSettings

logger = logging.getLogger(__name__)

# Scales the MAD to the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
_TINY = 1e-12


@dataclass(frozen=True)
class LossSpike:
    """One flagged step. `magnitude` is the robust z-score (or the ratio to the rolling
    median for ratio-only spikes; infinity for non-finite losses)."""

    step: int
    loss_name: str
    value: float
    magnitude: float
    reason: Literal["non_finite", "robust_z", "ratio"]
    rolling_median: float | None = None

    @property
    def end_reason(self) -> str:
        """The `TrainingAttempt.end_reason` this spike ends an attempt with."""
        return "non_finite_loss" if self.reason == "non_finite" else "loss_spike"

    def describe(self) -> str:
        if self.reason == "non_finite":
            return f"{self.loss_name} was {self.value} at step {self.step}"
        return (
            f"{self.loss_name} jumped to {self.value:.4g} at step {self.step} "
            f"(rolling median {self.rolling_median:.4g}, {self.reason} {self.magnitude:.1f})"
        )


class LossSpikeDetector:
    """Judge each new loss value against the rolling window of the same loss."""

    def __init__(self, settings: SpikeSettings, watch: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.watch = settings.watch if watch is None else watch
        self._history: dict[str, deque[float]] = {}

    def update(self, step: int, name: str, value: float) -> LossSpike | None:
        value = float(value)
        if not math.isfinite(value):
            return LossSpike(step, name, value, math.inf, "non_finite")
        if self.watch and name not in self.watch:
            return None
        history = self._history.setdefault(name, deque(maxlen=self.settings.window))
        spike = self._judge(step, name, value, history)
        if spike is None:
            # A spike stays out of the window so it cannot raise the bar for the next one.
            history.append(value)
        return spike

    def _judge(self, step: int, name: str, value: float, history: deque[float]) -> LossSpike | None:
        if len(history) < self.settings.warmup_steps:
            return None
        logs = np.log(np.maximum(np.asarray(history), _TINY))
        centre = float(np.median(logs))
        spread = max(
            _MAD_TO_SIGMA * float(np.median(np.abs(logs - centre))), self.settings.min_log_spread
        )
        z = (math.log(max(value, _TINY)) - centre) / spread
        median = math.exp(centre)
        ratio = value / median if median > 0 else math.inf
        if z > self.settings.robust_z:
            return LossSpike(step, name, value, z, "robust_z", median)
        if ratio > self.settings.ratio:
            return LossSpike(step, name, value, ratio, "ratio", median)
        return None


class LossSpikeCallback(Callback):
    """Record every training step's losses and stop training at the first spike.

    Losses are read from `trainer.callback_metrics` (the values the LightningModule
    logged in this step; with `on_epoch=True` Lightning stores them as `<name>_step`),
    falling back to the `loss` the training step returned.
    """

    def __init__(
        self,
        settings: SpikeSettings,
        loss_names: tuple[str, ...] = ("train_st", "train_ae", "train_stae", "train_loss"),
    ) -> None:
        # "loss" is the fallback name for modules that log nothing themselves.
        self.detector = LossSpikeDetector(settings, watch=(*settings.watch, "loss"))
        self.loss_names = loss_names
        self.losses: list[tuple[int, str, float]] = []
        self.spike: LossSpike | None = None

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        del pl_module, batch, batch_idx
        step = trainer.global_step  # optimizer steps done, this one included
        for name, value in self._step_losses(trainer, outputs).items():
            self.losses.append((step, name, value))
            spike = self.detector.update(step, name, value)
            if spike is not None and self.spike is None:
                self.spike = spike
                logger.warning("loss spike, stopping this attempt: %s", spike.describe())
                trainer.should_stop = True

    def _step_losses(self, trainer: Trainer, outputs: Any) -> dict[str, float]:
        metrics = trainer.callback_metrics
        found: dict[str, float] = {}
        for name in self.loss_names:
            value = metrics.get(f"{name}_step", metrics.get(name))
            if value is not None:
                found[name] = float(value)
        if not found and isinstance(outputs, dict) and "loss" in outputs:
            found["loss"] = float(outputs["loss"])
        return found
