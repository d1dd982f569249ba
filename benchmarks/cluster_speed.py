"""The same quick benchmark in the flow's process and on a local Dask cluster.

Runs `python -m flows.benchmark` twice on the generated demo dataset (default: 2
categories x PatchCore and EfficientAD, quick profile), once with `--cluster none` and
once with `--cluster local:N`, each in a fresh process with its own DuckDB file and
cache refresh on (no cell is reused). Prints the wall time of each run (process start
to exit, so imports, the Prefect API and the cluster's start-up count), the fit time of
every cell and the worker that ran it, and the ratio.

On a host with fewer cores than workers the cells fight over the same cores and the
ratio stays near 1; the gain comes from workers with their own cores or GPUs.

Usage:
    python benchmarks/cluster_speed.py [--workers 2] [--categories demo_grass,demo_grid]
        [--models patchcore,efficientad] [--overrides JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(work: Path, data_root: Path, cluster: str, args: argparse.Namespace) -> float:
    out = work / cluster.replace(":", "-")
    out.mkdir(parents=True)
    command = [
        *(sys.executable, "-m", "flows.benchmark", "--dataset", "demo"),
        *("--data-root", str(data_root), "--categories", args.categories),
        *("--models", args.models, "--cluster", cluster, "--db", str(out / "bench.duckdb")),
        *("--output-dir", str(out / "runs"), "--reports-dir", str(out / "reports")),
    ]
    if args.overrides:
        command += ["--overrides", args.overrides]
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_TASKS_REFRESH_CACHE="true",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    with (out / "flow.log").open("w") as log:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"--cluster {cluster} failed, see {out / 'flow.log'}")
    with duckdb.connect(str(out / "bench.duckdb"), read_only=True) as con:
        cells = con.execute(
            "select model, category, train_seconds, worker from results order by all"
        ).fetchall()
    print(f"--cluster {cluster}: {seconds:.0f} s wall")
    for model, category, fit, worker in cells:
        print(f"  {model}/{category}: fit {fit:.1f} s on {worker}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--categories", default="demo_grass,demo_grid")
    parser.add_argument("--models", default="patchcore,efficientad")
    parser.add_argument("--overrides", default=None, help="JSON profile overrides")
    args = parser.parse_args()
    if args.overrides:
        json.loads(args.overrides)  # fail before the first run on a typo

    sys.path.insert(0, str(REPO))
    from tasks.demo_data import ensure_demo_dataset

    print(f"{os.cpu_count()} CPU cores; {args.models} x {args.categories}, quick profile")
    with tempfile.TemporaryDirectory(prefix="cluster-speed-") as tmp:
        work = Path(tmp)
        data_root = ensure_demo_dataset(work / "demo")
        in_process = run_benchmark(work, data_root, "none", args)
        cluster = run_benchmark(work, data_root, f"local:{args.workers}", args)
    print(f"in-process / local:{args.workers} wall-time ratio: {in_process / cluster:.2f}")


if __name__ == "__main__":
    main()
