"""Every inference path of PatchCore and EfficientAD-S beside anomalib's own, from one run.

Trains each model with the quick profile on one category
(`tasks.training.coordinator.train_and_evaluate`, the same cell the benchmark flow runs)
with every inference path switched on, then prints per model and path: batch-1 p50/p95
(image file -> score, decode included), img/s, the
image AUROC on the full test split and its difference from torch fp32, and the speed-up
over anomalib's default torch path and anomalib's OpenVINO export. Then the targets
(256 px, batch 1, decode included): EfficientAD-S >= 15 img/s and PatchCore (10 %
coreset) >= 40 img/s on the deployable path (AUROC within 0.005 of fp32), >= 3x
anomalib's default path and faster than anomalib's OpenVINO export.

Figures depend on what else runs on the cores: the load average is printed with them.

Run (`--markdown` also writes the table into docs/performance.md):
    python -m benchmarks.inference_paths                      # demo_grid (generated)
    python -m benchmarks.inference_paths --dataset mvtec \
        --data-root ../shared/datasets/mvtec_ad_subset --category grid
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.performance import Table, add_markdown_option, publish
from tasks.models.registry import get as registry_entry
from tasks.results.types import AUROC_TOLERANCE, DatasetSpec, LatencyResult, deployable
from tasks.runtime.hardware import device_name
from tasks.runtime.profiles import ALL_INFERENCE_PATHS, load_profile
from tasks.training.coordinator import train_and_evaluate

TARGET_IPS = {"efficientad": 15.0, "patchcore": 40.0}
TARGET_ANOMALIB_TORCH_RATIO = 3.0


def _spec(dataset: str, data_root: Path | None, category: str, work: Path) -> DatasetSpec:
    if dataset == "demo":
        from tasks.data.demo_data import ensure_demo_dataset

        root = ensure_demo_dataset(data_root or work / "demo")
        return DatasetSpec(kind="demo", root=root, categories=(category,))
    if data_root is None or not (data_root / category).is_dir():
        raise SystemExit(f"no category {category!r} under --data-root {data_root}")
    # absolute, as the flow makes it: anomalib resolves relative paths against its root
    return DatasetSpec(kind=dataset, root=data_root.absolute(), categories=(category,))


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(model: str, rows: list[LatencyResult]) -> None:
    anomalib = {r.path: r.p50_ms for r in rows if r.path.startswith("anomalib-") and r.p50_ms}
    print(
        f"{'model':12}{'path':19}{'p50 ms':>8}{'p95 ms':>8}{'img/s':>8}{'batch':>6}{'runs':>5}"
        f"{'AUROC':>8}{'dAUROC':>9}{'x a-torch':>10}{'x a-ov':>8}  note"
    )
    for r in rows:
        ratios = [
            _fmt(anomalib[p] / r.p50_ms if p in anomalib and r.p50_ms else None, ".2f")
            for p in ("anomalib-torch", "anomalib-openvino")
        ]
        note = r.status if r.status != "ok" else ""
        note += f" {r.error}" if r.error else ""
        print(
            f"{model:12}{r.path:19}{_fmt(r.p50_ms, '8.1f'):>8}{_fmt(r.p95_ms, '8.1f'):>8}"
            f"{_fmt(r.throughput_ips, '8.1f'):>8}{r.batch_size:>6}{r.timed_runs or 0:>5}"
            f"{_fmt(r.image_auroc, '.4f'):>8}{_fmt(r.auroc_delta, '+.4f'):>9}"
            f"{ratios[0]:>10}{ratios[1]:>8}  {note.strip()[:70]}"
        )


def add_rows(table: Table, model: str, rows: list[LatencyResult]) -> None:
    anomalib = {r.path: r.p50_ms for r in rows if r.path.startswith("anomalib-") and r.p50_ms}
    best = deployable(rows)
    for r in rows:
        ratios = [
            _fmt(anomalib[p] / r.p50_ms if p in anomalib and r.p50_ms else None, ".2f")
            for p in ("anomalib-torch", "anomalib-openvino")
        ]
        path = f"**{r.path}** (deployable)" if r is best else r.path
        if r.status != "ok":
            path += f" ({r.status})"
        table.add(registry_entry(model).display_name, path, _fmt(r.p50_ms, ".1f"),
                  _fmt(r.throughput_ips, ".1f"), r.batch_size, _fmt(r.auroc_delta, "+.3f"),
                  *ratios)  # fmt: skip


def print_targets(model: str, rows: list[LatencyResult]) -> None:
    best = deployable(rows)
    if best is None:
        print(f"{model}: no path within {AUROC_TOLERANCE} AUROC of fp32: targets not met")
        return
    ips = 1000 / best.p50_ms
    anomalib = {r.path: r.p50_ms for r in rows if r.path.startswith("anomalib-") and r.p50_ms}
    torch_ratio = anomalib["anomalib-torch"] / best.p50_ms if "anomalib-torch" in anomalib else None
    ov_ratio = (
        anomalib["anomalib-openvino"] / best.p50_ms if "anomalib-openvino" in anomalib else None
    )
    checks = [
        (f"{ips:.1f} img/s >= {TARGET_IPS[model]:.0f}", ips >= TARGET_IPS[model]),
        (
            f"{_fmt(torch_ratio, '.2f')}x anomalib-torch >= {TARGET_ANOMALIB_TORCH_RATIO:.0f}x",
            torch_ratio is not None and torch_ratio >= TARGET_ANOMALIB_TORCH_RATIO,
        ),
        (
            f"{_fmt(ov_ratio, '.2f')}x anomalib-openvino > 1x",
            ov_ratio is not None and ov_ratio > 1,
        ),
    ]
    verdicts = ", ".join(f"{text} {'MET' if ok else 'NOT MET'}" for text, ok in checks)
    print(
        f"{model}: deployable {best.path} (p50 {best.p50_ms:.1f} ms, dAUROC "
        f"{best.auroc_delta:+.4f}): {verdicts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("demo", "mvtec", "folder"), default="demo")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--category", default="demo_grid")
    parser.add_argument("--models", nargs="+", default=["patchcore", "efficientad"])
    parser.add_argument("--timed-runs", type=int, default=50)
    parser.add_argument("--max-seconds-per-path", type=float, default=120.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    add_markdown_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="inference-paths-"))
    spec = _spec(args.dataset, args.data_root, args.category, work)
    profile = load_profile(
        "quick",
        {
            "weights_dir": str(work / "weights"),
            "inference": {
                "paths": list(ALL_INFERENCE_PATHS),
                "timed_runs": args.timed_runs,
                "max_seconds_per_path": args.max_seconds_per_path,
                "anomalib_max_seconds": args.max_seconds_per_path,  # the full comparison
                "throughput_batch": 8,
            },
        },
    )
    results = {}
    for model in args.models:
        start = time.perf_counter()
        result = train_and_evaluate(model, args.category, spec, profile, work / model)
        results[model] = result
        print(f"{model}: cell done in {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\n{args.dataset}/{args.category}; {device_name('cpu')}, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (others' work "
        "included); p50/p95 at batch 1, decode included; img/s at the batch shown"
    )
    for model, result in results.items():
        print_table(model, result.latency)
    print()
    for model, result in results.items():
        print_targets(model, result.latency)
    table = Table(
        f"inference_paths-{args.category}",
        f"Every inference path on {args.dataset}/{args.category} (quick-profile training), "
        f"batch-1 p50 with decode, {args.timed_runs} timed runs per path",
        ["model", "path", "p50 ms", "img/s", "batch", "AUROC change", "x anomalib-torch",
         "x anomalib-openvino"],
    )  # fmt: skip
    for model, result in results.items():
        add_rows(table, model, result.latency)
    table.notes.append(
        f"deployable: the fastest of this project's paths within {AUROC_TOLERANCE} AUROC of "
        "torch-fp32; x anomalib-*: p50 speed-up over anomalib's own paths"
    )
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
