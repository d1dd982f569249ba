"""Inference latency and throughput of PatchCore and EfficientAD on 2 CPU cores.

Each model is trained quickly (quick profile) on one demo category, then timed with
`tasks.inference.speed.measure_latency` (decode + resize + normalise + forward incl. anomaly map
and score; fp32 and bf16) next to anomalib's own test path (`Engine.test` wall time per
test image, which adds Lightning, metrics and post-processing). Goal: PatchCore >= 20
images/s at 256x256, decode included.

Usage: python benchmarks/latency.py [--category demo_grid] [--iters 30] [--threads 2]
                                   [--skip-efficientad]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from anomalib.data import Folder
from anomalib.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.demo_data import ensure_demo_dataset  # noqa: E402
from tasks.inference.speed import measure_latency  # noqa: E402
from tasks.models.backbones import build_patchcore  # noqa: E402
from tasks.runtime.profiles import load_profile  # noqa: E402


def datamodule(category_dir: Path, batch_size: int) -> Folder:
    test = category_dir / "test"
    return Folder(
        name=category_dir.name,
        root=category_dir,
        normal_dir=category_dir / "train" / "good",
        abnormal_dir=[d for d in sorted(test.iterdir()) if d.name != "good"],
        normal_test_dir=test / "good",
        train_batch_size=batch_size,
        eval_batch_size=8,
        num_workers=0,
    )


def build(name: str, profile, cache: Path):
    if name == "patchcore":
        model, _ = build_patchcore(profile.patchcore)
        return model, profile.patchcore.train_batch_size, {}
    from tasks.models.efficientad.model import build_efficientad

    model, _ = build_efficientad(profile.efficientad, cache)
    return model, profile.efficientad.train_batch_size, {"max_steps": profile.efficientad.max_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="demo_grid")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-efficientad", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    profile = load_profile("quick")
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    category_dir = ensure_demo_dataset(work / "demo") / args.category
    test_images = sorted((category_dir / "test").rglob("*.png"))
    print(f"threads {torch.get_num_threads()}, {args.category}: {len(test_images)} test images")
    print(
        f"{'model':12} {'path':14} {'prec':5} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>7} "
        f"{'batch':>5} {'+MB':>6}"
    )
    for name in ("patchcore", "efficientad"):
        if name == "efficientad" and args.skip_efficientad:
            print(f"{name:12} skipped (--skip-efficientad)")
            continue
        try:
            model, batch_size, trainer_args = build(name, profile, work / "cache")
        except ImportError as err:
            print(f"{name:12} skipped: tasks.models.efficientad.model not available ({err})")
            continue
        engine = Engine(
            default_root_dir=work / name,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            **trainer_args,
        )
        data = datamodule(category_dir, batch_size)
        engine.fit(model=model, datamodule=data)
        for precision in ("fp32", "bf16"):
            for r in measure_latency(
                model,
                test_images,
                profile.patchcore.image_size,
                args.batch_size,
                args.iters,
                precision=precision,
            ):
                print(
                    f"{name:12} {r.path:14} {r.precision:5} {r.p50_ms:8.1f} {r.p95_ms:8.1f} "
                    f"{r.throughput_ips:7.1f} {r.batch_size:5d} {r.peak_memory_mb:6.0f}"
                )
        start = time.perf_counter()
        engine.test(model=model, datamodule=data, verbose=False)
        per_image = (time.perf_counter() - start) / len(test_images)
        print(
            f"{name:12} {'anomalib_test':14} {'fp32':5} {per_image * 1000:8.1f} {'':>8} "
            f"{1 / per_image:7.1f} {8:5d}"
        )


if __name__ == "__main__":
    main()
