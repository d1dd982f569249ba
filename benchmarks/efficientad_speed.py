"""EfficientAD-S inference speed on CPU at fp32, bf16 and through OpenVINO, and what it costs.

Trains one EfficientAD-S (offline teacher, quick profile) on one category, then for each
precision prints batch-1 latency p50/p95 and throughput at batch 8, JPEG/PNG decode and
resize included, and the image AUROC on the category's test set next to fp32's (plus the
rank agreement of the scores), so a speed-up's cost in accuracy is visible.

Run (`--markdown` also writes the table into docs/performance.md):
    python -m benchmarks.efficientad_speed
    python -m benchmarks.efficientad_speed --precisions fp32 bf16 --iters 10
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from scipy.stats import spearmanr
from torchmetrics.functional.classification import binary_auroc

from benchmarks.performance import Table, add_markdown_option, publish
from tasks.data.decode import load_images
from tasks.inference.openvino_backend import openvino_bf16_support
from tasks.inference.torch_backend import bf16_support
from tasks.models.efficientad.model import build_efficientad
from tasks.models.efficientad.scoring import efficientad_inference
from tasks.models.registry import settings_for
from tasks.results.types import LatencyResult
from tasks.runtime.profiles import load_profile

SHARED_MVTEC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad_subset"
REPO = Path(__file__).resolve().parents[1]


def train(root: Path, category: str, steps: int, cache: Path):
    profile = load_profile("quick", {"efficientad": {"max_steps": steps}})
    settings = settings_for("efficientad", profile)
    model, provenance = build_efficientad(settings, cache, profile.assets, visualizer=False)
    datamodule = MVTecAD(
        root=root, category=category, train_batch_size=1, eval_batch_size=8, num_workers=0
    )
    engine = Engine(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=cache / "engine",
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    return model, provenance, time.perf_counter() - start


def unsupported(precision: str) -> str | None:
    """Why `precision` would not run as labelled on this CPU, or None: a bf16 request on a
    CPU without bf16 is emulated by torch (minutes per image) or silently run f32 by OpenVINO."""
    if precision == "bf16":
        return bf16_support("cpu")
    if precision == "openvino-bf16":
        return openvino_bf16_support()
    return None


def time_precision(score, paths: list[Path], image_size: int, iters: int, precision: str):
    """Batch-1 latency (decode included) and batch-8 throughput, after a warm-up."""
    for path in paths[:2]:
        score(load_images([path], image_size))
    latencies = []
    for i in range(iters):
        start = time.perf_counter()
        score(load_images([paths[i % len(paths)]], image_size))
        latencies.append((time.perf_counter() - start) * 1000)
    batch = [paths[i % len(paths)] for i in range(8)]
    rounds = max(1, iters // 8)
    start = time.perf_counter()
    for _ in range(rounds):
        score(load_images(batch, image_size))
    throughput = 8 * rounds / (time.perf_counter() - start)
    return LatencyResult(
        p50_ms=statistics.median(latencies),
        p95_ms=statistics.quantiles(latencies, n=20)[-1],
        throughput_ips=throughput,
        batch_size=8,
        device="cpu",
        threads=torch.get_num_threads(),
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        precision=precision,
        path="openvino" if precision.startswith("openvino") else "torch",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_MVTEC)
    parser.add_argument("--category", default="grid")
    parser.add_argument("--steps", type=int, default=60, help="training steps (quick: 60)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "cache" / "efficientad")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16", "openvino-fp32", "openvino-bf16", "openvino-int8"],
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning_fabric", "anomalib", "nncf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (args.data / args.category).is_dir():
        raise SystemExit(f"no dataset at {args.data / args.category}: pass --data/--category")

    model, provenance, train_s = train(args.data, args.category, args.steps, args.cache)
    image_size = 256
    test_dir = args.data / args.category / "test"
    paths = sorted(test_dir.rglob("*.png"))
    labels = torch.tensor([int(p.parent.name != "good") for p in paths])
    train_paths = sorted((args.data / args.category / "train" / "good").glob("*.png"))
    calibration = load_images(train_paths[:16], image_size)
    images = load_images(paths, image_size)

    print(
        f"\nEfficientAD-S on {args.category}: {len(paths)} test images, {args.steps} steps "
        f"trained in {train_s:.0f} s; teacher: {provenance['teacher'][:60]}..."
    )
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'precision':<15}{'p50 ms':>8}{'p95 ms':>8}{'b8 img/s':>10}"
    print(header + f"{'AUROC':>7}{'dAUROC':>8}{'rank r':>8}{'setup s':>9}")
    table = Table(
        f"efficientad_speed-{args.category}",
        f"EfficientAD-S on {args.category} ({len(paths)} test images, {args.steps} training "
        f"steps), {args.iters} timed runs, torch threads {torch.get_num_threads()}",
        ["precision", "p50 ms", "p95 ms", "img/s batch 8", "AUROC", "AUROC change",
         "rank correlation", "setup s"],
    )  # fmt: skip
    reference = None
    for precision in args.precisions:
        if reason := unsupported(precision):
            print(f"{precision:<15}skipped: {reason}", flush=True)
            table.add(precision, f"skipped: {reason}", "", "", "", "", "", "")
            continue
        start = time.perf_counter()
        score = efficientad_inference(
            model, precision, image_size=image_size, calibration_images=calibration
        )
        setup_s = time.perf_counter() - start
        scores = torch.cat([score(images[i : i + 8]).pred_score for i in range(0, len(images), 8)])
        auroc = binary_auroc(scores, labels).item()
        reference = reference if reference is not None else (scores, auroc)
        rank = spearmanr(scores.numpy(), reference[0].numpy()).statistic
        timing = time_precision(score, paths, image_size, args.iters, precision)
        print(
            f"{precision:<15}{timing.p50_ms:>8.0f}{timing.p95_ms:>8.0f}{timing.throughput_ips:>10.2f}"
            f"{auroc:>7.3f}{auroc - reference[1]:>+8.3f}{rank:>8.3f}{setup_s:>9.1f}",
            flush=True,
        )
        table.add(precision, f"{timing.p50_ms:.0f}", f"{timing.p95_ms:.0f}",
                  f"{timing.throughput_ips:.2f}", f"{auroc:.3f}", f"{auroc - reference[1]:+.3f}",
                  f"{rank:.3f}", f"{setup_s:.1f}")  # fmt: skip
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
