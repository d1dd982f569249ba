"""Inference latency and throughput of PatchCore and EfficientAD on the CPU.

Each model is trained quickly (quick profile) on one demo category, then its torch-fp32
and torch-bf16 inference paths are timed with the benchmark's own timer
(`tasks.inference.timing.time_path`: decode + resize + normalise + forward incl. anomaly
map and score) next to anomalib's own test path (`Engine.test` wall time per test
image, which adds Lightning, metrics and post-processing). Peak memory: on CUDA,
`torch.cuda.max_memory_allocated`; on CPU the process's resident set size sampled every
20 ms, minus its size just before timing. Goal: PatchCore >= 20 images/s at 256x256,
decode included.

Usage: python -m benchmarks.latency [--category demo_grid] [--iters 30] [--threads 2]
                                    [--skip-efficientad] [--markdown]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from anomalib.data import Folder
from anomalib.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.performance import Table, add_markdown_option, publish  # noqa: E402
from tasks.data.demo_data import ensure_demo_dataset  # noqa: E402
from tasks.inference.path_types import PathContext, PathUnsupported  # noqa: E402
from tasks.inference.paths import BUILDERS  # noqa: E402
from tasks.inference.timing import p95, time_path  # noqa: E402
from tasks.models import registry  # noqa: E402
from tasks.models.entry import BuildContext  # noqa: E402
from tasks.runtime.profiles import InferenceSettings, load_profile  # noqa: E402

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


class _PeakMemory:
    """Peak extra memory in MB over a block: CUDA allocator peak, or sampled CPU RSS."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mb = max(0, peak - self._base) / 2**20


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
    """The model untrained, its settings, and its Lightning trainer arguments."""
    entry = registry.get(name)
    settings = entry.settings_for(profile)
    model, _ = entry.build(settings, BuildContext(cache, "cpu", profile.assets))
    return model, settings, entry.trainer_args(settings, "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="demo_grid")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-efficientad", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    profile = load_profile("quick")
    work = Path(tempfile.mkdtemp(prefix="latency-"))
    category_dir = ensure_demo_dataset(work / "demo") / args.category
    test_images = sorted((category_dir / "test").rglob("*.png"))
    print(f"threads {torch.get_num_threads()}, {args.category}: {len(test_images)} test images")
    table = Table(
        f"latency-{args.category}",
        f"torch paths against anomalib's test path on {args.category} ({len(test_images)} test "
        f"images, quick profile, {args.iters} timed runs, torch threads {torch.get_num_threads()})",
        ["model", "path", "p50 ms", "p95 ms", "img/s", "batch", "+MB"],
    )
    print(
        f"{'model':12} {'path':14} {'prec':5} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>7} "
        f"{'batch':>5} {'+MB':>6}"
    )
    for name in ("patchcore", "efficientad"):
        if name == "efficientad" and args.skip_efficientad:
            print(f"{name:12} skipped (--skip-efficientad)")
            continue
        try:
            model, settings, trainer_args = build(name, profile, work / "cache")
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
        data = datamodule(category_dir, settings.train_batch_size)
        engine.fit(model=model, datamodule=data)
        timing = InferenceSettings(
            timed_runs=args.iters,
            max_seconds_per_path=3600,
            warmup_runs=3,
            throughput_batch=args.batch_size,
            throughput_rounds=max(1, args.iters // args.batch_size),
        )
        ctx = PathContext(model.eval(), settings.image_size, [], work / "paths", timing, "cpu", 0)
        for path in ("torch-fp32", "torch-bf16"):
            try:
                built = BUILDERS[path](ctx)
            except PathUnsupported as why:
                print(f"{name:12} {path:14} skipped: {why}")
                continue
            with _PeakMemory("cpu") as memory:
                t = time_path(built, test_images, timing)
            print(
                f"{name:12} {path:14} {built.precision:5} {statistics.median(t.single_ms):8.1f} "
                f"{p95(t.single_ms):8.1f} {t.throughput_ips:7.1f} {t.throughput_batch:5d} "
                f"{memory.peak_mb:6.0f}"
            )
            table.add(name, path, f"{statistics.median(t.single_ms):.1f}",
                      f"{p95(t.single_ms):.1f}", f"{t.throughput_ips:.1f}", t.throughput_batch,
                      f"{memory.peak_mb:.0f}")  # fmt: skip
        start = time.perf_counter()
        engine.test(model=model, datamodule=data, verbose=False)
        per_image = (time.perf_counter() - start) / len(test_images)
        print(
            f"{name:12} {'anomalib_test':14} {'fp32':5} {per_image * 1000:8.1f} {'':>8} "
            f"{1 / per_image:7.1f} {8:5d}"
        )
        table.add(name, "anomalib Engine.test", f"{per_image * 1000:.1f}", "",
                  f"{1 / per_image:.1f}", 8, "")  # fmt: skip
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
