"""Train and evaluate one (model, category): attempts, spike-driven retraining, test metrics.

`train_and_evaluate` runs anomalib's `Engine` on an MVTec-layout category:

1. Data: anomalib's `Folder` datamodule. The test split is the complete test folder;
   validation never comes from it. By default a share of train/good is held out and
   anomalib paints synthetic anomalies into half of it (`ValSplitMode.SYNTHETIC`), or a
   folder the user names is used.
2. Training: PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly
   Detection") is one fit of its memory bank: one attempt. EfficientAD (Batzner et al.
   2024, "EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level
   Latencies") trains by gradient descent, watched by `tasks.loss_spikes`: a loss spike
   or a non-finite loss stops the attempt, and so does an implausible validation AUROC
   after it. Each retry restarts from fresh weights with a deliberate change (a new seed,
   the learning rate times `profile.retry_lr_factor`), at most `profile.max_attempts`.
   Restarting rather than resuming guarantees no spiked weight survives; at the quick
   profile's step counts it costs little.
3. Selection by validation image AUROC, never by test data. Every attempt is recorded.
4. Test: anomalib's metrics on the complete test split (see `tasks.evaluation`), every
   image's score, ROC points, overlays; then export and latency through `tasks.export`
   and `tasks.speed`.

Example:
    >>> from tasks.profiles import load_profile
    >>> result = train_and_evaluate(  # doctest: +SKIP
    ...     "efficientad", "grid", spec, load_profile("quick"), Path("runs/r1/efficientad_grid"))
    >>> result.metrics["image_auroc"], [a.end_reason for a in result.attempts]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Folder
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.utils import Split, ValSplitMode
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from tasks.evaluation import (
    VAL_IMAGE_AUROC,
    RankPreservingPostProcessor,
    TestPredictionCollector,
    build_evaluator,
    image_scores,
    metrics_from_test,
    roc_points,
    save_overlays,
)
from tasks.loss_spikes import LossSpike, LossSpikeCallback
from tasks.profiles import EfficientAdSettings, PatchCoreSettings, Profile
from tasks.results import DatasetError, DatasetSpec, ModelResult, TrainingAttempt

logger = logging.getLogger(__name__)

MODELS = ("patchcore", "efficientad")
REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# An Adam learning rate 1000x too high: a real divergence, not a faked loss value.
INJECTED_LR_FACTOR = 1000.0

Progress = Callable[[float, str], None]


class TrainingFailed(RuntimeError):
    """Every attempt ended in a spike or a non-finite loss; `attempts` says how."""

    def __init__(self, message: str, attempts: list[TrainingAttempt]) -> None:
        super().__init__(message)
        self.attempts = attempts


# --------------------------------------------------------------------------- models


def build_model(
    model_name: str, settings: PatchCoreSettings | EfficientAdSettings, cache_dir: Path
) -> tuple[Any, dict]:
    """An untrained anomalib model and its weight provenance, from the offline builders."""
    if model_name == "patchcore":
        from tasks.backbones import build_patchcore

        return build_patchcore(settings)
    from tasks.efficientad_offline import build_efficientad

    return build_efficientad(settings, cache_dir=cache_dir)


def _device(profile: Profile) -> str:
    if profile.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return profile.device


def _weights_dir(profile: Profile) -> Path:
    return Path(profile.weights_dir) if profile.weights_dir else REPO_ROOT / "data" / "weights"


# --------------------------------------------------------------------------- data


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class _FolderWithValidationDir(Folder):
    """`Folder` whose validation data is a user-named folder (good/ + defect folders)."""

    def __init__(self, validation_dir: Path, **kwargs: Any) -> None:
        super().__init__(val_split_mode=ValSplitMode.FROM_DIR, **kwargs)
        self.validation_dir = validation_dir

    def _create_val_split(self) -> None:
        defects = [d for d in sorted(self.validation_dir.iterdir()) if d.is_dir()]
        defects = [d for d in defects if d.name not in ("good", "ground_truth")]
        self.val_data = FolderDataset(
            name=f"{self.name}_validation",
            split=Split.TEST,
            normal_dir=self.validation_dir / "good",
            # FolderDataset only puts normal images into a test split from normal_test_dir.
            normal_test_dir=self.validation_dir / "good",
            abnormal_dir=defects or None,
        )


def make_datamodule(
    spec: DatasetSpec, category: str, profile: Profile, train_batch_size: int
) -> tuple[Folder, bool, int]:
    """anomalib `Folder` over an MVTec-layout category.

    Returns the datamodule, whether test masks are used and how many test images the
    folder holds (the test split must keep them all)."""
    root = spec.category_dir(category)
    test_dir = root / "test"
    if not (root / "train" / "good").is_dir() or not test_dir.is_dir():
        raise DatasetError(
            f"{root} is not an MVTec-layout category: expected train/good and test/ in it"
        )
    defects = [d for d in sorted(test_dir.iterdir()) if d.is_dir() and d.name != "good"]
    mask_dirs = [root / "ground_truth" / d.name for d in defects]
    has_masks = spec.masks_expected and bool(defects) and all(m.is_dir() for m in mask_dirs)
    n_test = sum(len(_images_in(d)) for d in test_dir.iterdir() if d.is_dir())
    common: dict[str, Any] = {
        "name": f"{spec.kind}_{category}",
        "root": root,
        "normal_dir": root / "train" / "good",
        "abnormal_dir": defects or None,
        "normal_test_dir": test_dir / "good" if (test_dir / "good").is_dir() else None,
        "mask_dir": mask_dirs if has_masks else None,
        "train_batch_size": train_batch_size,
        "eval_batch_size": profile.eval_batch_size,
        "num_workers": 0,
        "seed": profile.seed,
    }
    if profile.validation.directory:
        datamodule: Folder = _FolderWithValidationDir(Path(profile.validation.directory), **common)
    else:
        datamodule = Folder(
            val_split_mode=ValSplitMode.SYNTHETIC,
            val_split_ratio=profile.validation.split_ratio,
            **common,
        )
    datamodule.category = category
    return datamodule, has_masks, n_test


# --------------------------------------------------------------------------- callbacks


class LearningRateBlowUp(Callback):
    """Inject a real divergence: multiply the learning rate by `factor` from optimizer
    step `at_step` (1-based) on. The loss shows it from step `at_step + 1`."""

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


class _ProgressCallback(Callback):
    """Report training progress (a share of [start, end]) every ~5% of the steps."""

    def __init__(self, report: Progress, start: float, end: float, label: str) -> None:
        self.report, self.start, self.end, self.label = report, start, end, label

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
        if step % max(1, int(total) // 20) == 0 or step == total:
            share = min(1.0, step / max(1, total))
            self.report(
                self.start + share * (self.end - self.start), f"{self.label}: step {step}/{total}"
            )


def _monotone(progress: Progress | None) -> Progress:
    """Progress that never goes backwards (a retry restarts the step count)."""
    highest = [0.0]

    def report(fraction: float, message: str) -> None:
        highest[0] = max(highest[0], fraction)
        logger.info("%3.0f%% %s", 100 * highest[0], message)
        if progress is not None:
            progress(highest[0], message)

    return report


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """No progress bars or repeated framework chatter in the logs."""
    import tqdm
    from anomalib.models.image.efficient_ad import lightning_model as efficient_ad_module

    silent_tqdm = types.SimpleNamespace(tqdm=functools.partial(tqdm.tqdm, disable=True))
    chatty = [
        logging.getLogger(name)
        for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric")
    ]
    levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    original_tqdm = efficient_ad_module.tqdm
    efficient_ad_module.tqdm = silent_tqdm
    try:
        with warnings.catch_warnings():
            for message in (
                ".*no logger configured.*",
                ".*will override existing callbacks.*",
                ".*does not have many workers.*",
                ".*ckpt_path is not provided.*",
                ".*configure_optimizers` returned `None`.*",
                ".*module\\(s\\) in eval mode.*",
                ".*LeafSpec.*",
                ".*infer the `batch_size` from an ambiguous collection.*",
                ".*`weights_only` was not set.*",
                ".*`check_val_every_n_epoch`.*",
                # pixel metrics without masks: anomalib skips them and they come back None
                ".*was called before the ``update`` method.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        efficient_ad_module.tqdm = original_tqdm
        for lg, level in zip(chatty, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------- attempts


@dataclass
class TrainedAttempt:
    """One fitted attempt: its record, the model with its final weights, its engine."""

    attempt: TrainingAttempt
    model: Any
    engine: Engine
    weights: dict


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


def _validation_auroc(engine: Engine, model: Any, datamodule: Folder) -> float | None:
    results = engine.validate(model, datamodule=datamodule, verbose=False)
    value = results[0].get(VAL_IMAGE_AUROC) if results else None
    return None if value is None or not math.isfinite(float(value)) else float(value)


def fit_attempt(
    model_name: str,
    number: int,
    seed: int,
    settings: PatchCoreSettings | EfficientAdSettings,
    datamodule: Folder,
    profile: Profile,
    run_dir: Path,
    callbacks: list[Callback],
    trainer_args: dict[str, Any],
) -> tuple[TrainedAttempt, LossSpikeCallback]:
    """Build a fresh model (seeded), fit it under the loss watcher; no validation yet."""
    seed_everything(seed, workers=True, verbose=False)
    model, weights = build_model(model_name, settings, _weights_dir(profile))
    model.evaluator = build_evaluator()
    model.post_processor = RankPreservingPostProcessor()
    model.visualizer = None  # overlays are written by tasks.evaluation, for a few images only
    watcher = LossSpikeCallback(profile.spike)
    engine = _engine(
        run_dir / f"attempt_{number}", _device(profile), [watcher, *callbacks], **trainer_args
    )
    engine.fit(model, datamodule=datamodule)
    attempt = TrainingAttempt(
        attempt=number,
        seed=seed,
        learning_rate=getattr(settings, "lr", None),
        steps=engine.trainer.global_step,
        end_reason="completed",
        # PatchCore's training step only collects features; its logged "loss" is a dummy 0
        losses=watcher.losses if model_name == "efficientad" else [],
    )
    return TrainedAttempt(attempt, model, engine, weights), watcher


def _record_spike(attempt: TrainingAttempt, spike: LossSpike) -> None:
    attempt.end_reason = spike.end_reason
    attempt.spike_step = spike.step
    attempt.spike_loss_name = spike.loss_name
    attempt.spike_value = spike.value if math.isfinite(spike.value) else None
    attempt.spike_magnitude = spike.magnitude if math.isfinite(spike.magnitude) else None


def _train_efficientad(
    datamodule: Folder,
    profile: Profile,
    run_dir: Path,
    report: Progress,
    label: str,
    inject_spike_at: int | None,
) -> tuple[TrainedAttempt, list[TrainingAttempt], list[str]]:
    base = profile.efficientad
    attempts: list[TrainingAttempt] = []
    best: TrainedAttempt | None = None
    notes: list[str] = []
    for number in range(1, profile.max_attempts + 1):
        seed = profile.seed + number - 1
        lr = base.lr * profile.retry_lr_factor ** (number - 1)
        settings = base.model_copy(update={"lr": lr})
        share = 0.8 / profile.max_attempts
        callbacks: list[Callback] = [
            _ProgressCallback(
                report,
                0.05 + share * (number - 1),
                0.05 + share * number,
                f"{label} attempt {number}",
            )
        ]
        if inject_spike_at is not None and number == 1:
            callbacks.append(LearningRateBlowUp(inject_spike_at))
        trained, watcher = fit_attempt(
            "efficientad",
            number,
            seed,
            settings,
            datamodule,
            profile,
            run_dir,
            callbacks,
            {"max_steps": base.max_steps, "precision": base.training_precision},
        )
        attempt = trained.attempt
        attempts.append(attempt)
        if watcher.spike is not None:
            _record_spike(attempt, watcher.spike)
            problem = watcher.spike.describe()
        else:
            attempt.validation_metric = _validation_auroc(trained.engine, trained.model, datamodule)
            metric = attempt.validation_metric
            if metric is not None and metric >= profile.validation.min_image_auroc:
                best = trained if best is None or metric > _metric(best) else best
                break
            attempt.end_reason = "implausible_validation"
            problem = f"validation image AUROC {metric} below {profile.validation.min_image_auroc}"
            if metric is not None and (best is None or metric > _metric(best)):
                best = trained
        if number < profile.max_attempts:
            attempt.retry_reason = (
                f"{problem}: restart from fresh weights with seed {seed + 1} and learning rate "
                f"{lr * profile.retry_lr_factor:.3g} (x{profile.retry_lr_factor})"
            )
            logger.warning("%s attempt %d: %s", label, number, attempt.retry_reason)
    if best is None:
        raise TrainingFailed(
            f"{label}: all {len(attempts)} attempts failed: "
            + "; ".join(f"#{a.attempt} {a.end_reason}" for a in attempts),
            attempts,
        )
    if best.attempt.end_reason == "implausible_validation":
        notes.append(
            f"no attempt reached validation image AUROC {profile.validation.min_image_auroc}; "
            f"kept attempt {best.attempt.attempt}, the best on validation"
        )
    best.attempt.chosen = True
    return best, attempts, notes


def _metric(trained: TrainedAttempt) -> float:
    return (
        trained.attempt.validation_metric if trained.attempt.validation_metric is not None else -1
    )


def _train_patchcore(
    datamodule: Folder, profile: Profile, run_dir: Path, report: Progress, label: str
) -> tuple[TrainedAttempt, list[TrainingAttempt], list[str]]:
    trained, _ = fit_attempt(
        "patchcore",
        1,
        profile.seed,
        profile.patchcore,
        datamodule,
        profile,
        run_dir,
        [_ProgressCallback(report, 0.05, 0.6, f"{label} memory bank")],
        {},
    )
    trained.attempt.validation_metric = _validation_auroc(trained.engine, trained.model, datamodule)
    trained.attempt.chosen = True
    notes = []
    metric = trained.attempt.validation_metric
    if metric is None or metric < profile.validation.min_image_auroc:
        # Nothing deliberate to change: the memory bank is a deterministic fit.
        notes.append(f"PatchCore validation image AUROC {metric} is implausible; not retrained")
    return trained, [trained.attempt], notes


# --------------------------------------------------------------------------- entry point


def _artifacts(
    trained: TrainedAttempt,
    image_size: int,
    profile: Profile,
    run_dir: Path,
    test_images: list,
    train_paths: list[Path],
    notes: list[str],
) -> tuple[dict[str, str], list]:
    """Checkpoint, export and every inference path (tasks.inference); a failure here is
    noted, not fatal to the metrics."""
    artifacts: dict[str, str] = {}
    checkpoint = run_dir / "model.ckpt"
    trained.engine.trainer.save_checkpoint(checkpoint)
    artifacts["checkpoint"] = str(checkpoint)
    try:
        from tasks.export import export_model

        exported = export_model(trained.model, trained.engine, run_dir / "export")
        artifacts.update({k: v for k, v in exported.items() if k != "checkpoint"})
    except Exception as err:  # noqa: BLE001 - the trained model's results still stand
        logger.exception("export failed")
        notes.append(f"export failed: {type(err).__name__}: {err}")
    latency: list = []
    try:
        from tasks.inference import measure_inference_paths

        paths = measure_inference_paths(
            trained.model,
            [Path(im.path) for im in test_images],
            [im.label for im in test_images],
            train_paths,
            image_size=image_size,
            out_dir=run_dir / "inference",
            settings=profile.inference,
            device=_device(profile),
            torch_export=artifacts.get("torch"),
        )
        latency = paths.latency
        artifacts.update(paths.artifacts)
    except Exception as err:  # noqa: BLE001
        logger.exception("latency measurement failed")
        notes.append(f"latency not measured: {type(err).__name__}: {err}")
    return artifacts, latency


def train_and_evaluate(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_dir: Path,
    progress: Progress | None = None,
    inject_spike_at: int | None = None,
) -> ModelResult:
    """Train `model_name` on one category, select by validation, evaluate on all of test.

    `inject_spike_at=N` blows up the learning rate at optimizer step N of the first
    EfficientAD attempt (for tests and benchmarks); it is ignored for PatchCore, which
    has no gradient steps."""
    model_name = model_name.lower()
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}: choose one of {MODELS}")
    if category not in spec.categories:
        raise DatasetError(
            f"category {category!r} is not in dataset {spec.root} ({spec.categories})"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    label = f"{model_name}/{category}"
    report = _monotone(progress)
    report(0.0, f"{label}: preparing data")
    settings = profile.patchcore if model_name == "patchcore" else profile.efficientad
    datamodule, has_masks, n_test = make_datamodule(
        spec, category, profile, settings.train_batch_size
    )
    started = time.perf_counter()
    with quiet_training():
        if model_name == "patchcore":
            trained, attempts, notes = _train_patchcore(datamodule, profile, run_dir, report, label)
        else:
            trained, attempts, notes = _train_efficientad(
                datamodule, profile, run_dir, report, label, inject_spike_at
            )
        train_seconds = time.perf_counter() - started
        if len(datamodule.test_data) != n_test:
            raise RuntimeError(
                f"{label}: test split has {len(datamodule.test_data)} images, the folder {n_test}"
            )
        report(0.85, f"{label}: testing on all {n_test} test images")
        collector = TestPredictionCollector()
        trained.engine.trainer.callbacks.append(collector)
        results = trained.engine.test(trained.model, datamodule=datamodule, verbose=False)
        trained.engine.trainer.callbacks.remove(collector)
        metrics = metrics_from_test(results[0] if results else {}, has_masks)
        images = collector.images
        report(0.9, f"{label}: overlays, export and latency")
        artifacts = save_overlays(images, run_dir / "overlays", profile.overlays)
        exported, latency = _artifacts(
            trained,
            settings.image_size,
            profile,
            run_dir,
            images,
            _images_in(spec.category_dir(category) / "train" / "good"),
            notes,
        )
    artifacts.update(exported)
    if trained.weights.get("source") == "fallback":
        notes.append(f"weights are a fallback, not the paper's pretrained ones: {trained.weights}")
    report(1.0, f"{label}: done, image AUROC {metrics['image_auroc']}")
    return ModelResult(
        model=model_name,
        category=category,
        profile=profile.name,
        settings={
            "model": settings.model_dump(mode="json"),
            "chosen_learning_rate": trained.attempt.learning_rate,
            "chosen_seed": trained.attempt.seed,
            "seed": profile.seed,
            "max_attempts": profile.max_attempts,
            "retry_lr_factor": profile.retry_lr_factor,
            "spike": profile.spike.model_dump(mode="json"),
            "validation": profile.validation.model_dump(mode="json"),
            "eval_batch_size": profile.eval_batch_size,
            "test_images": n_test,
            "masks": has_masks,
        },
        weights=trained.weights,
        device=_device(profile),
        metrics=metrics,
        attempts=attempts,
        roc_points=roc_points(images),
        scores=image_scores(images),
        latency=latency,
        artifacts=artifacts,
        train_seconds=train_seconds,
        notes=notes,
    )
