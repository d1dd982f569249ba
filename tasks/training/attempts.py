"""Training attempts of one cell: fit under the loss watcher, validate, recover, select.

A one-shot fit (PatchCore, Roth et al. 2022: its memory bank) is one attempt. A model
trained by gradient descent (EfficientAD, Batzner et al. 2024) trains under
`tasks.training.loss_spikes`: a confirmed spike rolls back to the last good in-memory
checkpoint with a lower learning rate and goes on to the planned step count. A fresh
restart (new seed, learning rate times `profile.retry_lr_factor`) is the last resort:
no checkpoint before the spike, repeated rollbacks, or a validation that says the
model is broken (`tasks.training.evaluation.judge_validation`), at most
`profile.max_attempts` attempts. `select` keeps the attempt with the best validation
image AUROC, never test data. The model's registry entry says which kind it is.

Example:
    >>> candidates, attempts = fit_with_recovery(prep)
    >>> chosen, notes = select(candidates, attempts, prep.label)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Folder
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, seed_everything

from tasks.models import registry
from tasks.models.settings import ModelSettings
from tasks.results.types import TrainingAttempt
from tasks.runtime.profiles import Profile
from tasks.training.callbacks import ProgressCallback
from tasks.training.evaluation import (
    PredictionCollector,
    ValidationVerdict,
    judge_validation,
    raw_score_post_processor,
)
from tasks.training.loss_spikes import LossSpike, LossSpikeCallback
from tasks.training.prepare import Prepared

logger = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """Every attempt ended in a spike or a non-finite loss; `attempts` says how."""

    def __init__(self, message: str, attempts: list[TrainingAttempt]) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass
class TrainedAttempt:
    """One fitted attempt: its record, the model with its final weights, its engine."""

    attempt: TrainingAttempt
    model: Any
    engine: Engine
    weights: dict
    collector: PredictionCollector
    verdict: ValidationVerdict | None = None


def _engine(run_dir: Path, device: str, callbacks: list[Callback], **trainer_args: Any) -> Engine:
    return Engine(
        default_root_dir=run_dir,
        callbacks=callbacks,
        accelerator=device,
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        # Validation runs once, explicitly, after fit: selection needs the final weights.
        check_val_every_n_epoch=10**6,
        **trainer_args,
    )


def fit_attempt(
    model_name: str,
    number: int,
    seed: int,
    settings: ModelSettings,
    datamodule: Folder,
    profile: Profile,
    run_dir: Path,
    callbacks: list[Callback],
    trainer_args: dict[str, Any] | None = None,
) -> tuple[TrainedAttempt, LossSpikeCallback]:
    """Build a fresh model (seeded), fit it under the loss watcher; no validation yet.

    `trainer_args` default to the model's own (its registry entry's, e.g. its steps)."""
    seed_everything(seed, workers=True, verbose=False)
    entry = registry.get(model_name)
    context = registry.build_context(entry.name, profile)
    device = context.device
    model, weights = entry.build(settings, context)
    model.evaluator = None  # metrics come from raw scores (tasks.training.evaluation)
    model.post_processor = raw_score_post_processor()
    model.visualizer = None  # overlays: tasks.training.evaluation writes a few
    gradient = entry.gradient
    # a one-shot fit has no gradient steps to roll back: no checkpoints of its backbone
    spike = profile.spike if gradient else profile.spike.model_copy(update={"checkpoint_every": 0})
    watcher = LossSpikeCallback(spike, attempt=number)
    collector = PredictionCollector()
    if trainer_args is None:
        trainer_args = entry.trainer_args(settings, device)
    engine = _engine(
        run_dir / f"attempt_{number}", device, [watcher, collector, *callbacks], **trainer_args
    )
    engine.fit(model, datamodule=datamodule)
    attempt = TrainingAttempt(
        attempt=number,
        seed=seed,
        learning_rate=getattr(settings, "lr", None),
        steps=engine.trainer.global_step,
        end_reason="completed",
        # a one-shot fit's training step only collects features (PatchCore's): its logged
        # "loss" is a dummy 0
        losses=watcher.losses if gradient else [],
        recoveries=watcher.recoveries if gradient else [],
    )
    return TrainedAttempt(attempt, model, engine, weights, collector), watcher


@contextlib.contextmanager
def inference_layout(model: LightningModule) -> Iterator[None]:
    """The model's convolutions channels-last while it scores images on a CPU, then NCHW,
    anomalib's default, in which its own exports (the `anomalib-*` paths) time it.

    oneDNN scores channels-last faster on the CPU kinds measured, even where a model
    trains faster NCHW (docs/performance.md, inference layout)."""
    if model.device.type != "cpu":
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def validate_attempt(trained: TrainedAttempt, datamodule: Folder, confidence: float) -> None:
    """Score the validation split with the attempt's final weights; record the verdict."""
    trained.collector.take()
    with inference_layout(trained.model):
        trained.engine.validate(trained.model, datamodule=datamodule, verbose=False)
    verdict = judge_validation(trained.collector.take(), confidence)
    trained.verdict = verdict
    attempt = trained.attempt
    if verdict.interval is not None:
        attempt.validation_metric = verdict.interval.auroc
        attempt.validation_low = verdict.interval.low
        attempt.validation_high = verdict.interval.high
        attempt.validation_pairs = verdict.interval.pairs
    if verdict.problem is not None:
        attempt.end_reason = "implausible_validation"


def _record_spike(attempt: TrainingAttempt, spike: LossSpike) -> None:
    attempt.end_reason = spike.end_reason
    attempt.spike_step = spike.first_step
    attempt.spike_loss_name = spike.loss_name
    attempt.spike_value = spike.value if math.isfinite(spike.value) else None
    attempt.spike_magnitude = spike.magnitude if math.isfinite(spike.magnitude) else None


def fit_with_recovery(prep: Prepared) -> tuple[list[TrainedAttempt], list[TrainingAttempt]]:
    """Fit (and validate) attempts until one is not broken; returns the candidates (the
    attempts that trained to the end) and every attempt's record."""
    if not registry.get(prep.model_name).gradient:
        return _fit_once(prep)
    profile = prep.profile
    base = prep.settings
    candidates: list[TrainedAttempt] = []
    attempts: list[TrainingAttempt] = []
    for number in range(1, profile.max_attempts + 1):
        seed = profile.seed + number - 1
        lr = base.lr * profile.retry_lr_factor ** (number - 1)
        settings = base.model_copy(update={"lr": lr})
        share = 0.8 / profile.max_attempts
        progress = ProgressCallback(
            prep.report,
            0.05 + share * (number - 1),
            0.05 + share * number,
            f"{prep.label} attempt {number}",
        )
        trained, watcher = fit_attempt(
            prep.model_name,
            number,
            seed,
            settings,
            prep.datamodule,
            profile,
            prep.run_dir,
            [progress, *prep.callbacks],
        )
        attempts.append(trained.attempt)
        if watcher.spike is not None:
            _record_spike(trained.attempt, watcher.spike)
            problem = watcher.spike.describe()
        else:
            validate_attempt(trained, prep.datamodule, profile.validation.confidence)
            candidates.append(trained)
            problem = trained.verdict.problem if trained.verdict else None
            if problem is None:
                break
        if number < profile.max_attempts:
            trained.attempt.retry_reason = (
                f"{problem}: restart from fresh weights with seed {seed + 1} and learning rate "
                f"{lr * profile.retry_lr_factor:.3g} (x{profile.retry_lr_factor})"
            )
            logger.warning("%s attempt %d: %s", prep.label, number, trained.attempt.retry_reason)
    return candidates, attempts


def _fit_once(prep: Prepared) -> tuple[list[TrainedAttempt], list[TrainingAttempt]]:
    """One attempt: a one-shot fit (PatchCore's memory bank) is deterministic, a retry
    would change nothing."""
    profile = prep.profile
    trained, _ = fit_attempt(
        prep.model_name,
        1,
        profile.seed,
        prep.settings,
        prep.datamodule,
        profile,
        prep.run_dir,
        [ProgressCallback(prep.report, 0.05, 0.6, f"{prep.label} fit"), *prep.callbacks],
    )
    validate_attempt(trained, prep.datamodule, profile.validation.confidence)
    return [trained], [trained.attempt]


def select(
    candidates: list[TrainedAttempt], attempts: list[TrainingAttempt], label: str
) -> tuple[TrainedAttempt, list[str]]:
    """The candidate with the best validation image AUROC (earliest on a tie); a broken
    one only when nothing else trained, and then with a note that says so."""
    if not candidates:
        raise TrainingFailed(
            f"{label}: all {len(attempts)} attempts failed: "
            + "; ".join(f"#{a.attempt} {a.end_reason}" for a in attempts),
            attempts,
        )
    plausible = [c for c in candidates if c.verdict is not None and c.verdict.problem is None]
    pool = plausible or candidates

    def rank(c: TrainedAttempt) -> tuple[float, int]:
        auroc = c.verdict.auroc if c.verdict and c.verdict.auroc is not None else -1.0
        return auroc, -c.attempt.attempt

    best = max(pool, key=rank)
    best.attempt.chosen = True
    notes = []
    if not plausible:
        problem = best.verdict.problem if best.verdict else "no validation"
        notes.append(
            f"validation says the model is broken ({problem}); kept attempt "
            f"{best.attempt.attempt}, the best of {len(candidates)} that trained to the end"
        )
    return best, notes
