"""Loss-spike detection and recovery by rollback for gradient training (EfficientAD).

`LossSpikeDetector` is pure logic: feed it `(step, name, value)` and it answers with a
`LossSpike` when a loss is not finite (at once) or has moved far above its recent history
and stayed there. Each value is judged against a rolling window of earlier, unremarkable
values of the same loss (its median as the centre, the median absolute deviation of the
log-loss as the scale: a Hampel filter, Hampel 1974). Two rules confirm a spike:

- a *divergence*: `persistence` steps in a row, each with a robust z-score above
  `robust_z` *and* over `ratio` times the rolling median (a blown-up learning rate);
- a *level shift*: `shift_steps` steps in a row, each over `shift_ratio` times the
  rolling median (the loss settled on a higher level and stays there).

Batch-1 EfficientAD losses are heavy-tailed: on a 2,000-step clean run a quarter of the
steps sit 2-13x above the median, and runs of 3-5 such steps occur. So neither one far-out
step nor a short run of them is a spike, and a value above `shift_ratio` never enters the
window (a lasting shift cannot raise its own bar). Only upward moves count.

`LossSpikeCallback` wires it into Lightning. It records every step's logged losses
(`train_st`, `train_ae`, `train_stae`, `train_loss`) and keeps a rolling in-memory
checkpoint of the last good state (model, optimizer, scheduler, step) every
`checkpoint_every` steps. On a confirmed spike it restores the newest checkpoint taken
before the spike's first flagged step, multiplies the learning rate by
`rollback_lr_factor`, and goes on with the *next* batches (the ones that led into the
spike are not replayed). The lost steps are added back to the plan, up to
`max_extra_steps_share` of it. Each rollback is a `Recovery`. When no checkpoint
predates the spike, or after `max_rollbacks`, it stops training (`.spike` is set) and
the caller restarts from fresh weights: the last resort.

Example:
    >>> from tasks.runtime.profiles import SpikeSettings
    >>> detector = LossSpikeDetector(SpikeSettings(window=10, warmup_steps=5, persistence=2))
    >>> events = [detector.update(step, "train_loss", v) for step, v in
    ...           enumerate([1.0, 0.98, 0.97, 0.99, 0.96, 0.95, 40.0, 45.0])]
    >>> events[-1].onset_step, events[-1].step, events[-1].reason
    (6, 7, 'divergence')
"""

from __future__ import annotations

import copy
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from tasks.results.types import Recovery
from tasks.runtime.profiles import SpikeSettings

logger = logging.getLogger(__name__)

# Scales the MAD to the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
_TINY = 1e-12


@dataclass(frozen=True)
class LossSpike:
    """One confirmed spike. `step` confirms it, `onset_step` is its first flagged step.
    `magnitude` is the robust z-score (divergence), the ratio to the rolling median
    (level shift; the smallest over the confirming steps) or infinity (non-finite loss)."""

    step: int
    loss_name: str
    value: float
    magnitude: float
    reason: Literal["non_finite", "divergence", "level_shift"]
    rolling_median: float | None = None
    onset_step: int | None = None

    @property
    def first_step(self) -> int:
        return self.step if self.onset_step is None else self.onset_step

    @property
    def end_reason(self) -> str:
        """The `TrainingAttempt.end_reason` this spike ends an attempt with."""
        return "non_finite_loss" if self.reason == "non_finite" else "loss_spike"

    def describe(self) -> str:
        if self.reason == "non_finite":
            return f"{self.loss_name} was {self.value} at step {self.step}"
        what = "robust z" if self.reason == "divergence" else "x the median, at least"
        return (
            f"{self.loss_name} {self.reason.replace('_', ' ')}: {self.value:.4g} at step "
            f"{self.first_step}, still up at step {self.step} (rolling median "
            f"{self.rolling_median:.4g}, {what} {self.magnitude:.1f})"
        )


@dataclass(frozen=True)
class _Flag:
    """One step above the bar: over `shift_ratio` x the rolling median."""

    step: int
    value: float
    z: float
    ratio: float
    median: float
    divergent: bool  # also over `robust_z` and over `ratio` x the median


class LossSpikeDetector:
    """Judge each new loss value against the rolling window of the same loss."""

    def __init__(self, settings: SpikeSettings, watch: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.watch = settings.watch if watch is None else watch
        self._history: dict[str, deque[float]] = {}
        self._flagged: dict[str, list[_Flag]] = {}

    def update(self, step: int, name: str, value: float) -> LossSpike | None:
        value = float(value)
        if not math.isfinite(value):
            return LossSpike(step, name, value, math.inf, "non_finite", onset_step=step)
        if self.watch and name not in self.watch:
            return None
        history = self._history.setdefault(name, deque(maxlen=self.settings.window))
        flagged = self._flagged.setdefault(name, [])
        flag = self._judge(step, value, history)
        if flag is None:
            # A flagged value stays out of the window so it cannot raise the bar.
            history.append(value)
            flagged.clear()
            return None
        flagged.append(flag)
        spike = self._confirm(name, flagged)
        if spike is not None:
            flagged.clear()
        return spike

    def _confirm(self, name: str, flagged: list[_Flag]) -> LossSpike | None:
        # The spike is dated to the first step of the flagged run, not to its first
        # divergent step: a rollback then restores weights from before all of it.
        settings, onset, last = self.settings, flagged[0], flagged[-1]
        divergent = next(  # divergent steps at the end of the run
            (i for i, flag in enumerate(reversed(flagged)) if not flag.divergent), len(flagged)
        )
        if divergent >= settings.persistence:
            first = flagged[-divergent]
            return LossSpike(
                last.step, name, first.value, first.z, "divergence", onset.median, onset.step
            )
        if len(flagged) >= settings.shift_steps:
            lowest = min(flag.ratio for flag in flagged)
            return LossSpike(
                last.step, name, onset.value, lowest, "level_shift", onset.median, onset.step
            )
        return None

    @property
    def pending(self) -> bool:
        """Some loss has flagged steps not yet confirmed as a spike."""
        return any(self._flagged.values())

    def reset_pending(self) -> None:
        """Forget flagged steps not yet confirmed (after a rollback)."""
        for flagged in self._flagged.values():
            flagged.clear()

    def _judge(self, step: int, value: float, history: deque[float]) -> _Flag | None:
        settings = self.settings
        if len(history) < settings.warmup_steps:
            return None
        logs = np.log(np.maximum(np.asarray(history), _TINY))
        centre = float(np.median(logs))
        spread = max(
            _MAD_TO_SIGMA * float(np.median(np.abs(logs - centre))), settings.min_log_spread
        )
        z = (math.log(max(value, _TINY)) - centre) / spread
        median = math.exp(centre)
        ratio = value / median if median > 0 else math.inf
        if ratio <= settings.shift_ratio:
            return None
        divergent = z > settings.robust_z and ratio > settings.ratio
        return _Flag(step, value, z, ratio, median, divergent)


@dataclass
class _Checkpoint:
    step: int
    model: dict[str, Any]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]


def _snapshot(trainer: Trainer, pl_module: LightningModule) -> _Checkpoint:
    return _Checkpoint(
        step=trainer.global_step,
        model={k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        optimizers=[copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
        schedulers=[copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
    )


def _restore(trainer: Trainer, pl_module: LightningModule, checkpoint: _Checkpoint) -> None:
    pl_module.load_state_dict(checkpoint.model)
    for optimizer, state in zip(trainer.optimizers, checkpoint.optimizers, strict=True):
        optimizer.load_state_dict(copy.deepcopy(state))
    for config, state in zip(trainer.lr_scheduler_configs, checkpoint.schedulers, strict=True):
        config.scheduler.load_state_dict(copy.deepcopy(state))


def _scale_learning_rate(trainer: Trainer, factor: float) -> tuple[float | None, float | None]:
    before = after = None
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            before = before if before is not None else float(group["lr"])
            group["lr"] *= factor
            after = after if after is not None else float(group["lr"])
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    return before, after


class LossSpikeCallback(Callback):
    """Record every training step's losses; roll back on a spike, stop as a last resort.

    Losses are read from `trainer.callback_metrics` (the values the LightningModule
    logged in this step; with `on_epoch=True` Lightning stores them as `<name>_step`),
    falling back to the `loss` the training step returned. `attempt` labels the
    recoveries it records.
    """

    def __init__(
        self,
        settings: SpikeSettings,
        loss_names: tuple[str, ...] = ("train_st", "train_ae", "train_stae", "train_loss"),
        attempt: int = 1,
    ) -> None:
        # "loss" is the fallback name for modules that log nothing themselves.
        self.settings = settings
        self.detector = LossSpikeDetector(settings, watch=(*settings.watch, "loss"))
        self.loss_names = loss_names
        self.attempt = attempt
        self.losses: list[tuple[int, str, float]] = []
        self.recoveries: list[Recovery] = []
        self.spike: LossSpike | None = None
        self._checkpoints: deque[_Checkpoint] = deque(maxlen=3)
        self._planned_steps: int | None = None
        self.extra_steps = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._planned_steps = trainer.max_steps if trainer.max_steps > 0 else None
        if self.settings.checkpoint_every > 0:
            self._checkpoints.append(_snapshot(trainer, pl_module))

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        del batch, batch_idx
        step = trainer.global_step  # optimizer steps done, this one included
        spike = None
        for name, value in self._step_losses(trainer, outputs).items():
            self.losses.append((step, name, value))
            found = self.detector.update(step, name, value)
            spike = spike or found
        if spike is not None:
            self._recover(trainer, pl_module, spike)
        elif self._due_for_checkpoint(step):
            self._checkpoints.append(_snapshot(trainer, pl_module))

    def _due_for_checkpoint(self, step: int) -> bool:
        every = self.settings.checkpoint_every
        return every > 0 and step % every == 0 and not self.detector.pending

    def _recover(self, trainer: Trainer, pl_module: LightningModule, spike: LossSpike) -> None:
        # The loss at step s is computed on the weights after step s - 1, whose update
        # came from weights after step s - 2: only checkpoints up to onset - 2 are clean.
        clean = [c for c in self._checkpoints if c.step <= spike.first_step - 2]
        if not clean or len(self.recoveries) >= self.settings.max_rollbacks:
            why = "no checkpoint before it" if not clean else f"{len(self.recoveries)} rollbacks"
            logger.warning("loss spike (%s), stopping this attempt: %s", why, spike.describe())
            self.spike = spike
            trainer.should_stop = True
            return
        checkpoint = clean[-1]
        _restore(trainer, pl_module, checkpoint)
        lr_before, lr_after = _scale_learning_rate(trainer, self.settings.rollback_lr_factor)
        lost = trainer.global_step - checkpoint.step
        extra = self._extend_plan(trainer, lost)
        while self._checkpoints and self._checkpoints[-1].step > checkpoint.step:
            self._checkpoints.pop()
        self.detector.reset_pending()
        recovery = Recovery(
            attempt=self.attempt,
            spike_step=spike.step,
            onset_step=spike.first_step,
            restored_step=checkpoint.step,
            skipped_batches=lost,
            extra_steps=extra,
            loss_name=spike.loss_name,
            value=spike.value if math.isfinite(spike.value) else None,
            magnitude=spike.magnitude if math.isfinite(spike.magnitude) else None,
            reason=spike.reason,
            learning_rate_before=lr_before,
            learning_rate_after=lr_after,
        )
        self.recoveries.append(recovery)
        logger.warning("%s", recovery.describe())

    def _extend_plan(self, trainer: Trainer, lost: int) -> int:
        """Give back the rolled-back steps, up to `max_extra_steps_share` of the plan."""
        if self._planned_steps is None:
            return 0
        budget = int(self.settings.max_extra_steps_share * self._planned_steps)
        extra = max(0, min(lost, budget - self.extra_steps))
        if extra:
            self.extra_steps += extra
            trainer.fit_loop.epoch_loop.max_steps += extra
        return extra

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
