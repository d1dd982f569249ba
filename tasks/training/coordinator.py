"""Train and evaluate one (model, category), as a sequence of named stages.

`train_and_evaluate` reads as the pipeline it runs:

1. `prepare` (`tasks.training.prepare`): anomalib's `Folder` datamodule over an
   MVTec-layout category; the test split is the complete test folder, validation never
   comes from it (`tasks.data.datamodule`).
2. `fit_with_recovery` (`tasks.training.attempts`): one fit, or gradient training with
   spike rollback and fresh restarts, as the model's registry entry says.
3. `select`: the attempt with the best validation image AUROC, never test data.
4. `evaluate`: raw test scores, float64 metrics, ROC points, overlays.
5. `export` and `time_inference`: each stored as completed or failed with its error.

Example:
    >>> result = train_and_evaluate(  # doctest: +SKIP
    ...     "efficientad", "grid", spec, load_profile("quick"), Path("runs/r1/efficientad_grid"))
    >>> result.metrics["image_auroc"], [a.end_reason for a in result.attempts]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from tasks.data.datamodule import validation_anomalies
from tasks.inference.measure import measure_inference_paths
from tasks.models import registry
from tasks.results.types import DatasetSpec, LatencyResult, ModelResult, StageOutcome
from tasks.runtime.profiles import Profile, profile_overrides, training_device
from tasks.runtime.quiet import quiet_training
from tasks.runtime.writes import as_write_failure
from tasks.training.attempts import TrainedAttempt, fit_with_recovery, inference_layout, select
from tasks.training.callbacks import Progress
from tasks.training.evaluation import (
    ScoredImage,
    image_scores,
    roc_points,
    save_overlays,
    test_metrics,
)
from tasks.training.export import export_model
from tasks.training.prepare import Prepared, prepare

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    images: list[ScoredImage]
    metrics: dict[str, Any]
    overlays: dict[str, str]


def evaluate(prep: Prepared, chosen: TrainedAttempt) -> Evaluation:
    """Raw test scores of the complete test split; float64 metrics; overlays."""
    prep.report(0.85, f"{prep.label}: testing on all {prep.n_test} test images")
    chosen.collector.take()
    with inference_layout(chosen.model):
        chosen.engine.test(chosen.model, datamodule=prep.datamodule, verbose=False)
    images = chosen.collector.take()
    if len(images) != prep.n_test:
        raise RuntimeError(
            f"{prep.label}: test split has {len(images)} images, the folder {prep.n_test}"
        )
    post = chosen.model.post_processor
    metrics = test_metrics(
        images, float(post.image_threshold), float(post.pixel_threshold), prep.has_masks
    )
    overlays = save_overlays(images, prep.run_dir / "overlays", prep.profile.overlays)
    return Evaluation(images, metrics, overlays)


def _failed(stage: str, err: Exception, started: float) -> StageOutcome:
    logger.error("%s failed: %s: %s", stage, type(err).__name__, err)
    return StageOutcome(stage, "failed", f"{type(err).__name__}: {err}", _since(started))


def _since(started: float) -> float:
    return time.perf_counter() - started


def export(prep: Prepared, chosen: TrainedAttempt) -> tuple[dict[str, str], StageOutcome]:
    """The Lightning checkpoint (always) and anomalib's torch export (completed or failed)."""
    checkpoint = prep.run_dir / "model.ckpt"
    chosen.engine.trainer.save_checkpoint(checkpoint)
    artifacts = {"checkpoint": str(checkpoint)}
    started = time.perf_counter()
    export_dir = prep.run_dir / "export"
    try:
        exported = export_model(chosen.model, chosen.engine, export_dir)
    except Exception as err:  # noqa: BLE001 - stored as a failed stage, the metrics stand
        failure = as_write_failure(err, export_dir, "export")
        if failure is not err:  # a full or read-only disk: no half-written export stays
            shutil.rmtree(export_dir, ignore_errors=True)
        return artifacts, _failed("export", failure, started)
    artifacts.update({k: v for k, v in exported.items() if k != "checkpoint"})
    return artifacts, StageOutcome("export", "completed", None, _since(started))


def time_inference(
    prep: Prepared, chosen: TrainedAttempt, images: list[ScoredImage], artifacts: dict[str, str]
) -> tuple[list[LatencyResult], dict[str, str], StageOutcome]:
    """Every inference path (tasks.inference.measure): latency, throughput and image AUROC on the
    test images, each path's row `ok` or failed with its error, never silent. Int8
    calibration reads training images and the validation split's anomalies, never test
    images."""
    started = time.perf_counter()
    try:
        paths = measure_inference_paths(
            chosen.model,
            [Path(im.path) for im in images],
            [im.label for im in images],
            prep.train_paths,
            image_size=prep.settings.image_size,
            out_dir=prep.run_dir / "inference",
            settings=prep.profile.inference,
            device=training_device(prep.profile),
            torch_export=artifacts.get("torch"),
            anomaly_paths=validation_anomalies(prep.datamodule),
            deployment=registry.get(prep.model_name).deployment,
        )
    except Exception as err:  # noqa: BLE001 - stored as a failed stage, the metrics stand
        failure = as_write_failure(err, prep.run_dir / "inference", "inference paths")
        if failure is not err:  # a full or read-only disk: no half-written model stays
            shutil.rmtree(prep.run_dir / "inference", ignore_errors=True)
        return [], {}, _failed("latency", failure, started)
    if not any(row.status == "ok" for row in paths.latency):
        outcome = StageOutcome("latency", "failed", "no inference path ran", _since(started))
        return paths.latency, paths.artifacts, outcome
    return (
        paths.latency,
        paths.artifacts,
        StageOutcome("latency", "completed", None, _since(started)),
    )


def _settings_record(prep: Prepared, chosen: TrainedAttempt) -> dict[str, Any]:
    profile = prep.profile
    return {
        "model": prep.settings.model_dump(mode="json"),
        "chosen_learning_rate": chosen.attempt.learning_rate,
        "chosen_seed": chosen.attempt.seed,
        "seed": profile.seed,
        "max_attempts": profile.max_attempts,
        "retry_lr_factor": profile.retry_lr_factor,
        "spike": profile.spike.model_dump(mode="json"),
        "validation": profile.validation.model_dump(mode="json"),
        "eval_batch_size": profile.eval_batch_size,
        "assets": profile.assets.model_dump(mode="json"),
        "test_images": prep.n_test,
        "masks": prep.has_masks,
    }


def provenance_notes(profile: Profile, weights: dict[str, Any]) -> list[str]:
    """What the result's reader must know of how it was obtained: the settings this run
    overrode in its profile, and substitutes used (allowed by `assets.allow_fallback`)."""
    notes = []
    overridden = profile_overrides(profile)
    if overridden:
        shown = ", ".join(f"{path}={json.dumps(value)}" for path, value in overridden.items())
        notes.append(f"settings overridden in profile {profile.name}: {shown}")
    if weights.get("source") == "fallback":
        notes.append(
            "weights are a fallback, not the paper's pretrained ones (a substitute allowed "
            f"by assets.allow_fallback in profile {profile.name}): {weights}"
        )
    return notes


def train_and_evaluate(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_dir: Path,
    progress: Progress | None = None,
    callbacks: list[Callback] | None = None,
) -> ModelResult:
    """Train `model_name` on one category, select by validation, evaluate on all of test.

    `callbacks` are added to every training attempt's trainer (e.g. to watch or
    perturb training)."""
    prep = prepare(model_name, category, spec, profile, run_dir, progress, callbacks)
    started = time.perf_counter()
    with quiet_training():
        candidates, attempts = fit_with_recovery(prep)
        chosen, notes = select(candidates, attempts, prep.label)
        train_seconds = _since(started)
        evaluation = evaluate(prep, chosen)
        prep.report(0.9, f"{prep.label}: export and latency")
        artifacts, exported = export(prep, chosen)
        latency, path_artifacts, timed = time_inference(prep, chosen, evaluation.images, artifacts)
        artifacts.update(path_artifacts)
    notes += provenance_notes(profile, chosen.weights)
    prep.report(1.0, f"{prep.label}: done, image AUROC {evaluation.metrics['image_auroc']:.3f}")
    return ModelResult(
        model=prep.model_name,
        category=category,
        profile=profile.name,
        settings=_settings_record(prep, chosen),
        weights=chosen.weights,
        device=training_device(profile),
        metrics=evaluation.metrics,
        attempts=attempts,
        roc_points=roc_points(evaluation.images),
        scores=image_scores(evaluation.images),
        latency=latency,
        artifacts={**evaluation.overlays, **artifacts},
        train_seconds=train_seconds,
        notes=notes,
        stages=[exported, timed],
    )
