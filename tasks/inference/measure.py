"""Every deployable inference path of a trained model, timed and scored, beside anomalib's own.

A user deploying a trained model on a CPU can run it in several ways; this module
builds each path a profile names (`tasks.inference.paths`), scores the complete test
split with it and times it the way a deployment runs (`tasks.inference.timing`):
image file on disk -> decode -> resize -> model -> score.

Paths (`PATHS`): `torch-fp32`, `torch-bf16` and `torch-fp16-graph`
(`tasks.inference.torch_backend`); `openvino-fp32`, `openvino-bf16` and `openvino-int8`
(`tasks.inference.openvino_backend`); `anomalib-torch` and `anomalib-openvino`, anomalib's
own (`tasks.inference.anomalib_backend`).

Each path gives one `LatencyResult`: batch-1 p50/p95 over `timed_runs` runs after
warm-up, throughput at a stated batch, the image AUROC of that path's scores on the
full test split and its difference from `torch-fp32`. A path that fails is returned as a
failed row carrying its error; a path the hardware cannot run is returned as skipped,
with the reason. OpenVINO IRs and the ONNX file are written under `out_dir`.

Example:
    >>> paths = measure_inference_paths(model, test_paths, test_labels, train_paths,
    ...                                 image_size=256, out_dir=run_dir / "inference",
    ...                                 settings=profile.inference)
    >>> [(r.path, r.p50_ms, r.auroc_delta) for r in paths.latency]  # doctest: +SKIP
    >>> deployable(paths.latency).path  # doctest: +SKIP
    'openvino-bf16'
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anomalib.models.components import AnomalibModule
from sklearn.metrics import roc_auc_score

from tasks.inference.deployment import AS_TRAINED, Deployment
from tasks.inference.path_types import PRECISIONS, PathContext, PathUnsupported
from tasks.inference.paths import BUILDERS, PATHS, REFERENCE_PATH
from tasks.inference.timing import p95, time_path
from tasks.results.types import LatencyResult
from tasks.runtime.hardware import device_name
from tasks.runtime.profiles import InferenceSettings

logger = logging.getLogger(__name__)


def image_auroc(scores: np.ndarray, labels: Sequence[int]) -> float | None:
    """Image AUROC of raw scores; None when scores are missing, non-finite or one class."""
    labels = np.asarray(labels)
    if scores is None or len(set(labels.tolist())) < 2 or not np.isfinite(scores).all():
        return None
    return float(roc_auc_score(labels, scores))


@dataclass
class InferencePaths:
    """The rows for the `latency` table and the files the paths wrote (IR, ONNX)."""

    latency: list[LatencyResult]
    artifacts: dict[str, str]


def measure_inference_paths(
    model: AnomalibModule,
    test_paths: Sequence[Path],
    test_labels: Sequence[int],
    train_paths: Sequence[Path],
    *,
    image_size: int,
    out_dir: Path,
    settings: InferenceSettings,
    device: str = "cpu",
    torch_export: Path | None = None,
    anomaly_paths: Sequence[Path] = (),
    deployment: Deployment = AS_TRAINED,
) -> InferencePaths:
    """Build, score and time every path in `settings.paths`; one `LatencyResult` each.

    `test_paths`/`test_labels` are the complete test split (label 1 = anomalous);
    `train_paths` are training images and `anomaly_paths` anomalous validation images
    (synthetic anomalies on held-out training images, or the validation folder's defects):
    the only images int8 calibration may see.
    `torch_export` is anomalib's torch export of `model` when one was written already;
    `deployment` is the model's exported form (its registry entry's).
    The reference for `auroc_delta` is `torch-fp32` (always measured first)."""
    if not test_paths or len(test_paths) != len(test_labels):
        raise ValueError("measure_inference_paths needs the test paths and one label each")
    test_set = {str(Path(p).resolve()) for p in test_paths}
    calibration = [*train_paths, *anomaly_paths]
    leaked = [str(p) for p in calibration if str(Path(p).resolve()) in test_set]
    if leaked:
        raise ValueError(f"calibration images must not be test images: {leaked[:3]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    ctx = PathContext(
        model=model,
        image_size=image_size,
        train_paths=[Path(p) for p in train_paths],
        anomaly_paths=[Path(p) for p in anomaly_paths],
        out_dir=out_dir,
        settings=settings,
        device=device,
        threads=settings.threads or torch.get_num_threads(),
        torch_export=Path(torch_export) if torch_export else None,
        deployment=deployment,
    )
    names = [REFERENCE_PATH, *(p for p in settings.paths if p != REFERENCE_PATH)]
    rows: list[LatencyResult] = []
    artifacts: dict[str, str] = {}
    reference: float | None = None
    for name in names:
        row = _measure_one(name, ctx, test_paths, test_labels, artifacts)
        if name == REFERENCE_PATH:
            reference = row.image_auroc
        if row.image_auroc is not None and reference is not None:
            row.auroc_delta = row.image_auroc - reference
        rows.append(row)
        logger.info("inference path %s", describe(row))
    return InferencePaths(latency=rows, artifacts=artifacts)


def _measure_one(
    name: str,
    ctx: PathContext,
    test_paths: Sequence[Path],
    test_labels: Sequence[int],
    artifacts: dict[str, str],
) -> LatencyResult:
    started = time.perf_counter()
    try:
        if name not in BUILDERS:
            raise ValueError(f"unknown inference path {name!r}: choose from {PATHS}")
        built = BUILDERS[name](ctx)
        setup_seconds = time.perf_counter() - started
        artifacts.update(built.artifacts)
        # this project's paths always score the whole test split (their AUROC decides
        # the deployable path); anomalib's are the speed comparison and may be cut short
        timing = time_path(built, test_paths, ctx.settings, not name.startswith("anomalib-"))
    except Exception as err:  # noqa: BLE001 - one path's failure is stored, the others run
        unsupported = isinstance(err, PathUnsupported)
        if not unsupported:
            logger.exception("inference path %s failed", name)
        return LatencyResult(
            p50_ms=None,
            p95_ms=None,
            throughput_ips=None,
            batch_size=1,
            device=ctx.device,
            threads=ctx.threads,
            peak_memory_mb=None,
            precision=PRECISIONS.get(name, "?"),
            path=name,
            status="skipped" if unsupported else "failed",
            error=f"{type(err).__name__}: {err}",
            setup_seconds=time.perf_counter() - started,
            hardware=device_name(ctx.device),
        )
    auroc = image_auroc(timing.scores, test_labels)
    return LatencyResult(
        p50_ms=statistics.median(timing.single_ms),
        p95_ms=p95(timing.single_ms),
        throughput_ips=timing.throughput_ips,
        batch_size=timing.throughput_batch,
        device=built.device,
        threads=built.threads,
        peak_memory_mb=None,
        precision=built.precision,
        path=name,
        image_auroc=auroc,
        timed_runs=len(timing.single_ms),
        warmup_runs=timing.warmup_runs,
        setup_seconds=setup_seconds,
        calibration_paths=built.calibration_paths,
        error=None if auroc is not None else "AUROC not measured: test pass exceeded time cap",
        hardware=device_name(built.device),
    )


def describe(row: LatencyResult) -> str:
    if row.status != "ok":
        return f"{row.path}: {row.status}: {row.error}"
    auroc = "n/a" if row.image_auroc is None else f"{row.image_auroc:.4f}"
    delta = "" if row.auroc_delta is None else f" ({row.auroc_delta:+.4f})"
    return (
        f"{row.path}: p50 {row.p50_ms:.1f} ms, p95 {row.p95_ms:.1f} ms over {row.timed_runs} "
        f"runs, {row.throughput_ips:.1f} img/s at batch {row.batch_size}, AUROC {auroc}{delta}"
    )
