"""Regenerate the sections of docs/performance.md that this machine can measure.

Each job is one benchmark command run with `--markdown`, which rewrites its own section
(between its markers) stamped with the hardware it ran on and the command. By default
only the cheap jobs run (each well under a few minutes on 2 CPU cores); `--all` adds the
ones that train models or time every path; `--only NAME ...` picks jobs. A job whose data
or device is absent (the shared MVTec AD subset, a CUDA GPU) is skipped with the reason.
Sections no job rewrote stay as they are: carried over, with their own hardware.

    python -m benchmarks.write_performance           # the cheap jobs
    python -m benchmarks.write_performance --all
    python -m benchmarks.write_performance --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_ARG = "../shared/datasets/mvtec_ad_subset"  # as a person types it, from the checkout
SHARED = REPO / SHARED_ARG
DEMO = REPO / "data" / "demo"


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    args: tuple[str, ...] = ()
    cheap: bool = True
    needs: str = ""  # "shared" (the MVTec AD subset), "demo" (generated), "gpu"


JOBS = (
    Job("decode-real", "benchmarks.decode_speed", ("--data-root", SHARED_ARG), needs="shared"),
    Job("decode-demo", "benchmarks.decode_speed", ("--data-root", "data/demo"), needs="demo"),
    Job("validation", "benchmarks.validation_speed"),
    Job("spike-replay", "benchmarks.spike_detection", ("--replay-only",), cheap=False),
    Job("nightly", "benchmarks.cluster_speed", ("--nightly", "4", "15")),
    Job(
        "gpu-stored",
        "benchmarks.gpu_latency",
        ("--from-json", "benchmarks/data/gpu/gpu_latency_h200.json"),
    ),
    Job("train-step", "benchmarks.efficientad_train_speed", ("--losses", "ours", "--steps", "4")),
    Job("coreset", "benchmarks.coreset_time", ("--skip-demo", "--steps", "100"), needs="shared"),
    Job(
        "int8-patchcore",
        "benchmarks.int8_calibration",
        ("--model", "patchcore", "--category", "demo_grass"),
        cheap=False,
    ),
    Job("paths-demo", "benchmarks.inference_paths", ("--category", "demo_brick"), cheap=False),
    Job("latency", "benchmarks.latency", (), cheap=False),
    Job("efficientad-speed", "benchmarks.efficientad_speed", (), cheap=False, needs="shared"),
    Job("spike-runs", "benchmarks.spike_detection", ("--seeds", "3"), cheap=False),
    Job("cluster", "benchmarks.cluster_speed", ("--models", "patchcore"), cheap=False),
    Job("gpu", "benchmarks.gpu_latency", (), cheap=False, needs="gpu"),
)


def missing(job: Job) -> str | None:
    """Why this machine cannot run `job`, or None."""
    if job.needs == "shared" and not SHARED.is_dir():
        return f"needs the shared MVTec AD subset at {SHARED}"
    if job.needs == "gpu":
        import torch

        if not torch.cuda.is_available():
            return "needs a CUDA GPU"
    return None


def run(job: Job, destination: Path) -> tuple[bool, float]:
    if job.needs == "demo":
        from tasks.data.demo_data import ensure_demo_dataset

        ensure_demo_dataset(DEMO)
    command = [sys.executable, "-m", job.module, *job.args, "--markdown", str(destination)]
    print(f"\n== {job.name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO)
    return done.returncode == 0, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="the multi-minute jobs too")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these jobs only")
    parser.add_argument("--list", action="store_true", help="list the jobs and exit")
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "performance.md", help="the page"
    )
    args = parser.parse_args()
    if args.list:
        for job in JOBS:
            cost = "cheap" if job.cheap else "slow (--all)"
            print(f"{job.name:18} {cost:13} python -m {job.module} {' '.join(job.args)}")
        return 0
    unknown = set(args.only or ()) - {job.name for job in JOBS}
    if unknown:
        parser.error(f"no such job: {', '.join(sorted(unknown))} (see --list)")
    chosen = [
        job for job in JOBS if (job.name in args.only if args.only else job.cheap or args.all)
    ]
    outcome = []
    for job in chosen:
        if reason := missing(job):
            outcome.append(f"{job.name}: skipped, {reason}")
            continue
        ok, seconds = run(job, args.output)
        outcome.append(f"{job.name}: {'rewritten' if ok else 'FAILED'} ({seconds:.0f} s)")
    print("\n" + "\n".join(outcome))
    return 0 if all("FAILED" not in line for line in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
