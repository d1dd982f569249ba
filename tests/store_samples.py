"""Hand-made results for the store and report tests: two models, two categories (one
without masks), a retrained EfficientAD with a loss spike, fallback PatchCore weights,
overlay PNGs, and an earlier run to compare with; and a store of eight models for the
report's layout (`build_many_models_store`)."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw

from checks.rule_result import RuleResult
from tasks.results.store.result_store import ResultStore
from tasks.results.types import LatencyResult, ModelResult, TrainingAttempt, ValidationReport

CATEGORIES = ["demo_grid", "demo_leather"]
MODELS = ["patchcore", "efficientad"]
# eight models, as issue 27 brings them: the report must keep them apart
MANY_MODELS = [
    "patchcore",
    "efficientad",
    "padim",
    "stfpm",
    "fastflow",
    "reverse_distillation",
    "dfm",
    "cflow",
]
MANY_CATEGORIES = ["demo_brick", "demo_grass", "demo_grid"]
HARDWARE = "Example CPU, 2 cpus, AVX2"
EVIL_NAME = "<img src=x onerror=alert(1)>.png"


def roc_curve(sharpness: float, points: int = 21) -> list[tuple[float, float]]:
    """A smooth concave ROC curve from (0, 0) to (1, 1); higher sharpness = better."""
    fprs = [i / (points - 1) for i in range(points)]
    return [(f, f ** (1 / sharpness)) for f in fprs]


def loss_curve(steps: int, start: float, spike_at: int | None = None) -> list[tuple[int, float]]:
    curve = []
    for step in range(steps):
        value = start * math.exp(-step / 40) + 0.05 + 0.01 * math.sin(step)
        if spike_at is not None and step == spike_at:
            value *= 40
        curve.append((step, value))
    return curve


def overlay_png(path: Path, shade: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (256, 256), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    draw.ellipse((90, 90, 170, 170), fill=(230, 40, 40))
    image.save(path)
    return path


def model_result(
    model: str,
    category: str,
    *,
    image_auroc: float,
    overlay_dir: Path | None = None,
    evil_overlay: bool = False,
    profile: str = "quick",
) -> ModelResult:
    has_masks = category != "demo_leather"
    pixel = (lambda v: v) if has_masks else (lambda v: None)
    if model == "patchcore":
        weights = {
            "backbone": "efficientnet_lite0",
            "source": "fallback",
            "reason": "wide_resnet50_2 weights not available offline",
        }
        attempts = [
            TrainingAttempt(
                attempt=1, seed=0, learning_rate=None, steps=1, end_reason="completed", chosen=True
            )
        ]
        settings = {"backbone": "auto", "coreset_sampling_ratio": 0.1, "image_size": 256}
    else:
        weights = {"backbone": "pdn_small", "source": "pretrained", "teacher": "imagenet"}
        spiked = [(s, "st", v) for s, v in loss_curve(61, 3.0, spike_at=60)]
        spiked += [(s, "ae", v / 2) for s, v in loss_curve(61, 2.0)]
        clean = [(s, "st", v) for s, v in loss_curve(150, 2.5)]
        clean += [(s, "ae", v / 2) for s, v in loss_curve(150, 1.5)]
        attempts = [
            TrainingAttempt(
                attempt=1,
                seed=0,
                learning_rate=1e-4,
                steps=61,
                end_reason="loss_spike",
                spike_step=60,
                spike_loss_name="st",
                spike_value=spiked[60][2],
                spike_magnitude=40.0,
                retry_reason="loss spike: lower learning rate, new seed",
                losses=spiked,
            ),
            TrainingAttempt(
                attempt=2,
                seed=1,
                learning_rate=5e-5,
                steps=150,
                end_reason="completed",
                chosen=True,
                validation_metric=0.91,
                losses=clean,
            ),
        ]
        settings = {"model": {"max_steps": 150, "model_size": "small"}, "seed": 0}
    artifacts = {}
    if overlay_dir is not None:
        folder = overlay_dir / model / category
        artifacts["overlay_best_0"] = str(overlay_png(folder / "best_0.png", 40))
        worst_name = EVIL_NAME if evil_overlay else "worst_0.png"
        artifacts["overlay_worst_0"] = str(overlay_png(folder / worst_name, 160))
    return ModelResult(
        model=model,
        category=category,
        profile=profile,
        settings={**settings, "masks": has_masks},
        weights=weights,
        device="cpu",
        worker=f"w-{model}-{category}@tcp://127.0.0.1:40001",
        metrics={
            "image_auroc": image_auroc,
            "image_f1": round(image_auroc - 0.05, 4),
            "image_f1_method": "adaptive threshold",
            "pixel_auroc": pixel(round(image_auroc - 0.02, 4)),
            "pixel_f1": pixel(0.55),
            "aupro": pixel(0.8),
        },
        attempts=attempts,
        roc_points=[("image", f, t) for f, t in roc_curve(1 + 8 * image_auroc)]
        + ([("pixel", f, t) for f, t in roc_curve(12)] if has_masks else []),
        scores=[
            {
                "path": f"{category}/test/good/{i:03d}.png",
                "label": 0,
                "defect_type": "good",
                "score": 0.1 * i,
            }
            for i in range(4)
        ]
        + [
            {
                "path": f"{category}/test/crack/{i:03d}.png",
                "label": 1,
                "defect_type": "crack",
                "score": 0.6 + 0.1 * i,
            }
            for i in range(3)
        ],
        latency=[
            LatencyResult(
                p50_ms=12.5 if model == "patchcore" else 8.25,
                p95_ms=15.0,
                throughput_ips=80.0,
                batch_size=1,
                device="cpu",
                threads=2,
                peak_memory_mb=512.0,
                precision="fp32",
                path="torch",
            ),
            LatencyResult(
                p50_ms=40.0,
                p95_ms=44.0,
                throughput_ips=200.0,
                batch_size=8,
                device="cpu",
                threads=2,
                peak_memory_mb=900.0,
                precision="fp32",
                path="torch",
            ),
        ],
        artifacts=artifacts,
        train_seconds=12.5,
        notes=[] if model == "efficientad" else ["latency measured on the torch path only"],
    )


def inference_paths(model: str, image_auroc: float, speed: float = 1.0) -> list[LatencyResult]:
    """The paths a cell times, torch-fp32 first: openvino-int8 is the fastest of ours for
    PatchCore (AUROC unchanged); for the others int8 moves the AUROC past the tolerance,
    so openvino-fp32 is deployable. anomalib-openvino is faster still but only a
    comparison; torch-bf16 failed and torch-fp16-graph was skipped (no figures)."""
    int8_delta = 0.0 if model == "patchcore" else -0.02

    def path(name, precision, p50, delta, status="ok", error=None):
        timed = status == "ok"
        return LatencyResult(
            p50_ms=p50 / speed if timed else None,
            p95_ms=p50 * 1.2 / speed if timed else None,
            throughput_ips=1000 * speed / p50 if timed else None,
            batch_size=1,
            device="cpu",
            threads=2,
            peak_memory_mb=None,
            precision=precision,
            path=name,
            image_auroc=round(image_auroc + delta, 4) if timed else None,
            auroc_delta=delta if timed else None,
            status=status,
            error=error,
            timed_runs=50 if timed else None,
            hardware=HARDWARE,
        )

    return [
        path("torch-fp32", "fp32", 40.0, 0.0),
        path("torch-bf16", "bf16", 30.0, 0.0, "failed", "RuntimeError: no bf16 kernel"),
        path("torch-fp16-graph", "fp16", 30.0, 0.0, "skipped", "needs a CUDA GPU"),
        path("openvino-fp32", "fp32", 25.0, 0.0),
        path("openvino-int8", "int8", 10.0, int8_delta),
        path("anomalib-torch", "fp32", 42.0, 0.0),
        path("anomalib-openvino", "fp32", 8.0, 0.0),
    ]


def validation_report(dataset: str = "demo") -> ValidationReport:
    return ValidationReport(
        dataset=dataset,
        dataset_hash="ab" * 32,
        notes=["demo dataset: synthetic textures"],
        rules=[
            RuleResult(
                tool="pandera",
                category="demo_grid",
                rule="file_opens_as_image",
                passed=True,
                failing_count=0,
                examples=[],
                message="every file decodes",
            ),
            RuleResult(
                tool="great_expectations",
                category="*",
                rule="mask_matches_image_size",
                passed=False,
                failing_count=2,
                examples=["demo_grid/ground_truth/crack/000_mask.png", "<script>alert(1)</script>"],
                message="mask size equals image size",
            ),
        ],
    )


# image AUROC per (run, model, category); run-0002's efficientad/demo_grid drops by 0.05
AUROC = {
    "run-0001": {
        ("patchcore", "demo_grid"): 0.97,
        ("patchcore", "demo_leather"): 0.99,
        ("efficientad", "demo_grid"): 0.95,
        ("efficientad", "demo_leather"): 0.96,
    },
    "run-0002": {
        ("patchcore", "demo_grid"): 0.98,
        ("patchcore", "demo_leather"): 0.985,
        ("efficientad", "demo_grid"): 0.90,
        ("efficientad", "demo_leather"): 0.965,
    },
}


def build_sample_store(db_path: Path, overlay_dir: Path, *, evil_overlay: bool = False) -> str:
    """Two completed runs of the demo dataset (the second with one regression) plus a
    run of another dataset; returns the id of the latest demo run."""
    store = ResultStore(db_path)
    start = datetime(2025, 1, 1, 8, 0, 0)
    for i, run_id in enumerate(AUROC):
        store.start_run(
            run_id,
            flow_run_id=f"flow-{i}",
            dataset="demo",
            data_root="data/demo",
            categories=CATEGORIES,
            models=MODELS,
            profile="quick",
            dataset_hash="ab" * 32,
            started_at=start + timedelta(days=i),
            environment={
                "python": "3.11",
                "cpu_count": 2,
                "packages": {"torch": "2.14.1", "anomalib": "2.7.0", "prefect": "3.9.0"},
            },
        )
        store.write_validations(run_id, validation_report())
        for model in MODELS:
            for category in CATEGORIES:
                auroc = AUROC[run_id][(model, category)]
                result = model_result(
                    model,
                    category,
                    image_auroc=auroc,
                    overlay_dir=overlay_dir,
                    evil_overlay=evil_overlay,
                )
                store.write_result(
                    run_id, dataclasses.replace(result, latency=inference_paths(model, auroc))
                )
        store.finish_run(run_id, "completed")
    # same category, other dataset or profile: never "comparable" with the demo runs
    for hours, (run_id, dataset, profile) in enumerate(
        [("mvtec-run", "mvtec", "quick"), ("paper-run", "demo", "paper")], start=12
    ):
        store.start_run(
            run_id,
            flow_run_id=None,
            dataset=dataset,
            data_root="/data",
            categories=["demo_grid"],
            models=["efficientad"],
            profile=profile,
            started_at=start + timedelta(hours=hours),
            environment={},
        )
        store.write_result(
            run_id, model_result("efficientad", "demo_grid", image_auroc=0.5, profile=profile)
        )
        store.finish_run(run_id, "completed")
    return "run-0002"


def build_many_models_store(db_path: Path, overlay_dir: Path | None = None) -> str:
    """Two completed runs of MANY_MODELS x MANY_CATEGORIES, each model with its own
    AUROC and speed (so charts have something to tell apart); returns the later run."""
    store = ResultStore(db_path)
    start = datetime(2025, 3, 1, 8, 0, 0)
    for r, run_id in enumerate(["many-0001", "many-0002"]):
        store.start_run(
            run_id,
            flow_run_id=None,
            dataset="demo",
            data_root="data/demo",
            categories=MANY_CATEGORIES,
            models=MANY_MODELS,
            profile="quick",
            dataset_hash="cd" * 32,
            started_at=start + timedelta(days=r),
            environment={"python": "3.11", "cpu_count": 2},
        )
        store.write_validations(run_id, validation_report())
        for m, model in enumerate(MANY_MODELS):
            for c, category in enumerate(MANY_CATEGORIES):
                auroc = round(1.0 - 0.015 * m - 0.02 * c - 0.01 * r * (m % 3), 4)
                result = model_result(model, category, image_auroc=auroc, overlay_dir=overlay_dir)
                paths = inference_paths(model, auroc, speed=0.4 + 0.5 * m)
                store.write_result(run_id, dataclasses.replace(result, latency=paths))
        store.finish_run(run_id, "completed")
    return "many-0002"
