"""Train and evaluate one (model, category), as a sequence of named stages.

`train_and_evaluate` reads as the pipeline it runs:

1. `prepare`: anomalib's `Folder` datamodule over an MVTec-layout category. The test
   split is the complete test folder; validation never comes from it. By default a
   share of train/good is held out, and every held-out image is kept as a normal one
   and painted with several synthetic anomalies (anomalib's Perlin generator); or a
   folder the user names is used.
2. `fit_with_recovery`: PatchCore (Roth et al. 2022, "Towards Total Recall in
   Industrial Anomaly Detection") is one fit of its memory bank. EfficientAD (Batzner
   et al. 2024, "EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level
   Latencies") trains by gradient descent under `tasks.training.loss_spikes`: a confirmed spike
   rolls back to the last good in-memory checkpoint with a lower learning rate and
   goes on to the planned step count. A fresh restart (new seed, learning rate times
   `profile.retry_lr_factor`) is the last resort: no checkpoint before the spike,
   repeated rollbacks, or a validation that says the model is broken (see
   `tasks.training.evaluation.judge_validation`), at most `profile.max_attempts` attempts.
3. `select`: the attempt with the best validation image AUROC, never test data.
4. `evaluate`: raw test scores, float64 metrics, ROC points, overlays.
5. `export` and `time_inference`: each stored as completed or failed with its error.

Example:
    >>> from tasks.runtime.paths import REPO_ROOT
from tasks.runtime.profiles import load_profile
    >>> result = train_and_evaluate(  # doctest: +SKIP
    ...     "efficientad", "grid", spec, load_profile("quick"), Path("runs/r1/efficientad_grid"))
    >>> result.metrics["image_auroc"], [a.end_reason for a in result.attempts]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.data import Folder
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.utils import Split, ValSplitMode, read_image
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.data.utils.split import random_split
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from PIL import Image

from checks.manifest_schema import IMAGE_EXTENSIONS
from tasks.models.efficientad.training import cpu_training_layout, resolve_training_precision
from tasks.results.types import (
    DatasetError,
    DatasetSpec,
    LatencyResult,
    ModelResult,
    StageOutcome,
    TrainingAttempt,
)
from tasks.runtime.profiles import (
    EfficientAdSettings,
    PatchCoreSettings,
    Profile,
    ValidationSettings,
)
from tasks.training.evaluation import (
    PredictionCollector,
    ScoredImage,
    ValidationVerdict,
    image_scores,
    judge_validation,
    raw_score_post_processor,
    roc_points,
    save_overlays,
    test_metrics,
)
from tasks.training.loss_spikes import LossSpike, LossSpikeCallback

logger = logging.getLogger(__name__)

MODELS = ("patchcore", "efficientad")
IMAGE_SUFFIXES = set(IMAGE_EXTENSIONS)  # what anomalib globs, and the gate checks

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
        from tasks.models.backbones import build_patchcore

        return build_patchcore(settings)
    from tasks.models.efficientad.model import build_efficientad

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


def synthetic_validation(
    normal: AnomalibDataset, settings: ValidationSettings, out_dir: Path, seed: int
) -> AnomalibDataset:
    """Every held-out normal image, plus `anomalies_per_image` copies of it painted with a
    synthetic anomaly (anomalib's `PerlinAnomalyGenerator`, Perlin-noise shapes filled
    with a perturbed copy of the image) and their masks, written under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = PerlinAnomalyGenerator(probability=1.0, blend_factor=settings.anomaly_blend)
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, source in enumerate(normal.samples.image_path):
            rows.append(
                {"image_path": source, "label": "normal", "label_index": 0, "mask_path": ""}
            )
            image = read_image(source, as_tensor=True)
            for j in range(settings.anomalies_per_image):
                painted, mask = generator(image)
                stem = f"{i:03d}_{j}"
                image_path, mask_path = out_dir / f"{stem}.png", out_dir / f"{stem}_mask.png"
                pixels = (painted.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
                Image.fromarray(pixels).save(image_path)
                binary = (mask.squeeze().numpy() > 0.5).astype(np.uint8) * 255
                Image.fromarray(binary).save(mask_path)
                rows.append(
                    {
                        "image_path": str(image_path),
                        "label": "abnormal",
                        "label_index": 1,
                        "mask_path": str(mask_path),
                    }
                )
    dataset = AnomalibDataset(augmentations=normal.augmentations)
    samples = pd.DataFrame(rows).assign(split=Split.VAL)
    samples.attrs["task"] = "segmentation"
    dataset.samples = samples
    return dataset


class _FolderWithSyntheticValidation(Folder):
    """`Folder` whose validation split is `synthetic_validation` of held-out train/good."""

    def __init__(self, settings: ValidationSettings, out_dir: Path, **kwargs: Any) -> None:
        super().__init__(
            val_split_mode=ValSplitMode.SYNTHETIC, val_split_ratio=settings.split_ratio, **kwargs
        )
        self.validation_settings = settings
        self.validation_out_dir = out_dir

    def _create_val_split(self) -> None:
        self.train_data, normal = random_split(
            self.train_data, self.validation_settings.split_ratio, seed=self.seed
        )
        self.val_data = synthetic_validation(
            normal, self.validation_settings, self.validation_out_dir, self.seed or 0
        )


def make_datamodule(
    spec: DatasetSpec,
    category: str,
    profile: Profile,
    train_batch_size: int,
    work_dir: Path | None = None,
) -> tuple[Folder, bool, int]:
    """anomalib `Folder` over an MVTec-layout category.

    Synthetic validation images go to `work_dir/validation` (a temp folder when None).
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
        out_dir = Path(work_dir or tempfile.mkdtemp(prefix="validation_")) / "validation"
        datamodule = _FolderWithSyntheticValidation(profile.validation, out_dir, **common)
    datamodule.category = category
    return datamodule, has_masks, n_test


# --------------------------------------------------------------------------- callbacks


class _ProgressCallback(Callback):
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


# --------------------------------------------------------------------------- stages


@dataclass
class Prepared:
    """What every stage of one (model, category) needs: data, settings, where to write."""

    model_name: str
    category: str
    profile: Profile
    settings: PatchCoreSettings | EfficientAdSettings
    datamodule: Folder
    has_masks: bool
    n_test: int
    run_dir: Path
    report: Progress
    train_paths: list[Path]
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.category}"


@dataclass
class TrainedAttempt:
    """One fitted attempt: its record, the model with its final weights, its engine."""

    attempt: TrainingAttempt
    model: Any
    engine: Engine
    weights: dict
    collector: PredictionCollector
    verdict: ValidationVerdict | None = None


@dataclass
class Evaluation:
    images: list[ScoredImage]
    metrics: dict[str, Any]
    overlays: dict[str, str]


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


def prepare(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_dir: Path,
    progress: Progress | None = None,
    callbacks: list[Callback] | None = None,
) -> Prepared:
    """Check the request and build the datamodule (test split complete, validation apart)."""
    model_name = model_name.lower()
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}: choose one of {MODELS}")
    if category not in spec.categories:
        raise DatasetError(
            f"category {category!r} is not in dataset {spec.root} ({spec.categories})"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = _monotone(progress)
    report(0.0, f"{model_name}/{category}: preparing data")
    settings = profile.patchcore if model_name == "patchcore" else profile.efficientad
    datamodule, has_masks, n_test = make_datamodule(
        spec, category, profile, settings.train_batch_size, work_dir=run_dir
    )
    return Prepared(
        model_name,
        category,
        profile,
        settings,
        datamodule,
        has_masks,
        n_test,
        run_dir,
        report,
        _images_in(spec.category_dir(category) / "train" / "good"),
        list(callbacks or []),
    )


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
    model.evaluator = None  # metrics come from raw scores (tasks.training.evaluation)
    model.post_processor = raw_score_post_processor()
    model.visualizer = (
        None  # overlays are written by tasks.training.evaluation, for a few images only
    )
    gradient = model_name == "efficientad"
    if gradient and _device(profile) == "cpu":
        model.model.to(memory_format=cpu_training_layout())
    # PatchCore has no gradient steps to roll back: no checkpoints of its backbone
    spike = profile.spike if gradient else profile.spike.model_copy(update={"checkpoint_every": 0})
    watcher = LossSpikeCallback(spike, attempt=number)
    collector = PredictionCollector()
    engine = _engine(
        run_dir / f"attempt_{number}",
        _device(profile),
        [watcher, collector, *callbacks],
        **trainer_args,
    )
    engine.fit(model, datamodule=datamodule)
    attempt = TrainingAttempt(
        attempt=number,
        seed=seed,
        learning_rate=getattr(settings, "lr", None),
        steps=engine.trainer.global_step,
        end_reason="completed",
        # PatchCore's training step only collects features; its logged "loss" is a dummy 0
        losses=watcher.losses if gradient else [],
        recoveries=watcher.recoveries if gradient else [],
    )
    return TrainedAttempt(attempt, model, engine, weights, collector), watcher


@contextlib.contextmanager
def inference_layout(model: LightningModule) -> Iterator[None]:
    """The model's convolutions channels-last while it scores images on a CPU, then NCHW,
    anomalib's default, in which its own exports (the `anomalib-*` paths) time it.

    oneDNN scores channels-last faster on both CPU kinds measured, even where training is
    faster NCHW (`cpu_training_layout`): anomalib's EfficientAD-S forward at batch 8 on a
    2-core AMD EPYC (AVX2) took 700 ms per image instead of 828."""
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
    profile = prep.profile
    if prep.model_name == "patchcore":
        # One attempt: the memory bank is a deterministic fit, nothing deliberate to change.
        trained, _ = fit_attempt(
            "patchcore",
            1,
            profile.seed,
            profile.patchcore,
            prep.datamodule,
            profile,
            prep.run_dir,
            [
                _ProgressCallback(prep.report, 0.05, 0.6, f"{prep.label} memory bank"),
                *prep.callbacks,
            ],
            {},
        )
        validate_attempt(trained, prep.datamodule, profile.validation.confidence)
        return [trained], [trained.attempt]
    base = profile.efficientad
    candidates: list[TrainedAttempt] = []
    attempts: list[TrainingAttempt] = []
    for number in range(1, profile.max_attempts + 1):
        seed = profile.seed + number - 1
        lr = base.lr * profile.retry_lr_factor ** (number - 1)
        precision = resolve_training_precision(base.training_precision, _device(profile))
        settings = base.model_copy(update={"lr": lr, "training_precision": precision})
        share = 0.8 / profile.max_attempts
        progress = _ProgressCallback(
            prep.report,
            0.05 + share * (number - 1),
            0.05 + share * number,
            f"{prep.label} attempt {number}",
        )
        trained, watcher = fit_attempt(
            "efficientad",
            number,
            seed,
            settings,
            prep.datamodule,
            profile,
            prep.run_dir,
            [progress, *prep.callbacks],
            {"max_steps": base.max_steps, "precision": settings.training_precision},
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
    try:
        from tasks.training.export import export_model

        exported = export_model(chosen.model, chosen.engine, prep.run_dir / "export")
    except Exception as err:  # noqa: BLE001 - stored as a failed stage, the metrics stand
        return artifacts, _failed("export", err, started)
    artifacts.update({k: v for k, v in exported.items() if k != "checkpoint"})
    return artifacts, StageOutcome("export", "completed", None, _since(started))


def validation_anomalies(datamodule: Folder) -> list[Path]:
    """The anomalous images of the validation split (set up by training): synthetic
    anomalies painted on held-out training images, or the validation folder's defects."""
    samples = datamodule.val_data.samples
    return [Path(p) for p in samples.loc[samples.label_index == 1, "image_path"]]


def time_inference(
    prep: Prepared, chosen: TrainedAttempt, images: list[ScoredImage], artifacts: dict[str, str]
) -> tuple[list[LatencyResult], dict[str, str], StageOutcome]:
    """Every inference path (tasks.inference.measure): latency, throughput and image AUROC on the
    test images, each path's row `ok` or failed with its error, never silent. Int8
    calibration reads training images and the validation split's anomalies, never test
    images."""
    started = time.perf_counter()
    try:
        from tasks.inference.measure import measure_inference_paths

        paths = measure_inference_paths(
            chosen.model,
            [Path(im.path) for im in images],
            [im.label for im in images],
            prep.train_paths,
            image_size=prep.settings.image_size,
            out_dir=prep.run_dir / "inference",
            settings=prep.profile.inference,
            device=_device(prep.profile),
            torch_export=artifacts.get("torch"),
            anomaly_paths=validation_anomalies(prep.datamodule),
        )
    except Exception as err:  # noqa: BLE001 - stored as a failed stage, the metrics stand
        return [], {}, _failed("latency", err, started)
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
        "test_images": prep.n_test,
        "masks": prep.has_masks,
    }


# --------------------------------------------------------------------------- coordinator


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
    if chosen.weights.get("source") == "fallback":
        notes.append(f"weights are a fallback, not the paper's pretrained ones: {chosen.weights}")
    prep.report(1.0, f"{prep.label}: done, image AUROC {evaluation.metrics['image_auroc']:.3f}")
    return ModelResult(
        model=prep.model_name,
        category=category,
        profile=profile.name,
        settings=_settings_record(prep, chosen),
        weights=chosen.weights,
        device=_device(profile),
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
