"""The same quick benchmark in the flow's process and on a local Dask cluster.

Runs `python -m flows.benchmark` twice on the generated demo dataset (default: 2
categories x PatchCore and EfficientAD, quick profile), once with `--cluster none` and
once with `--cluster local:N`, each in a fresh process with its own DuckDB file and
cache refresh on (no cell is reused). An untimed warm-up run first fills the offline
weights cache (the distilled EfficientAD teacher), so neither timed run pays for it.
Prints the wall time of each run (process start
to exit, so imports, the Prefect API and the cluster's start-up count), the fit time of
every cell and the worker that ran it, and the ratio.

On a host with fewer cores than workers the cells fight over the same cores and the
ratio stays near 1; the gain comes from workers with their own cores or GPUs.

`--nightly PATCHCORE_MIN EFFICIENTAD_MIN` prints instead what the nightly (15 MVTec AD
categories x both models) takes on 1..16 GPUs for the given per-cell minutes: cells
are handed to free workers in the flow's submission order (category by category,
PatchCore first), as the Dask scheduler does with one-thread workers.

Usage (`--markdown` also writes the figures into docs/performance.md):
    python -m benchmarks.cluster_speed [--workers 2] [--categories demo_grass,demo_grid]
        [--models patchcore,efficientad] [--overrides JSON]
    python -m benchmarks.cluster_speed --nightly 4 15
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.performance import Table, add_markdown_option, publish  # noqa: E402

MVTEC_CATEGORY_COUNT = 15

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(
    work: Path, data_root: Path, cluster: str, categories: str, models: str, overrides: dict
) -> float:
    out = work / f"{cluster.replace(':', '-')}-{models.replace(',', '-')}"
    out.mkdir(parents=True)
    command = [
        *(sys.executable, "-m", "flows.benchmark", "--dataset", "demo"),
        *("--data-root", str(data_root), "--categories", categories),
        *("--models", models, "--cluster", cluster, "--db", str(out / "bench.duckdb")),
        *("--output-dir", str(out / "runs"), "--reports-dir", str(out / "reports")),
        *("--overrides", json.dumps(overrides)),
    ]
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
        tail = (out / "flow.log").read_text()[-3000:]
        sys.exit(f"--cluster {cluster} failed:\n{tail}")
    with duckdb.connect(str(out / "bench.duckdb"), read_only=True) as con:
        cells = con.execute(
            "select model, category, train_seconds, worker from results order by all"
        ).fetchall()
    print(f"--cluster {cluster}: {seconds:.0f} s wall")
    for model, category, fit, worker in cells:
        print(f"  {model}/{category}: fit {fit:.1f} s on {worker}")
    return seconds, cells


def nightly_minutes(gpus: int, patchcore_min: float, efficientad_min: float) -> float:
    """Makespan of the nightly's cells on `gpus` one-cell-at-a-time workers."""
    free_at = [0.0] * gpus
    for _category in range(MVTEC_CATEGORY_COUNT):
        for cell_min in (patchcore_min, efficientad_min):
            first_free = free_at.index(min(free_at))
            free_at[first_free] += cell_min
    return max(free_at)


def nightly_table(patchcore_min: float, efficientad_min: float) -> Table:
    print(
        f"nightly: {MVTEC_CATEGORY_COUNT} categories x (PatchCore {patchcore_min:g} min + "
        f"EfficientAD {efficientad_min:g} min) per cell"
    )
    table = Table(
        "nightly_wall_time",
        f"The nightly ({MVTEC_CATEGORY_COUNT} MVTec AD categories x 2 models) on N GPUs, for "
        f"PatchCore {patchcore_min:g} min and EfficientAD {efficientad_min:g} min per cell",
        ["GPUs", "wall time, h", "GPU-hours held"],
    )
    for gpus in (1, 2, 4, 8, 15, 16):
        minutes = nightly_minutes(gpus, patchcore_min, efficientad_min)
        held = gpus * minutes / 60
        print(f"  {gpus:>2} GPUs: {minutes / 60:5.2f} h wall, {held:6.1f} GPU-hours held")
        table.add(gpus, f"{minutes / 60:.2f}", f"{held:.1f}")
    table.notes.append(
        "arithmetic on the per-cell minutes given, which are inputs, not measured here "
        "(cells handed to free workers in the flow's order)"
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--categories", default="demo_grass,demo_grid")
    parser.add_argument("--models", default="patchcore,efficientad")
    parser.add_argument("--overrides", default=None, help="JSON profile overrides")
    parser.add_argument(
        "--nightly",
        nargs=2,
        type=float,
        metavar=("PATCHCORE_MIN", "EFFICIENTAD_MIN"),
        help="only print the nightly's wall time on 1..16 GPUs for these per-cell minutes",
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.nightly:
        publish(nightly_table(*args.nightly), args.markdown, kind="computed")
        return
    overrides = json.loads(args.overrides) if args.overrides else {}

    from tasks.data.demo_data import ensure_demo_dataset

    print(f"{os.cpu_count()} CPU cores; {args.models} x {args.categories}, quick profile")
    if args.overrides:
        print(f"overrides: {args.overrides}")
    with tempfile.TemporaryDirectory(prefix="cluster-speed-") as tmp:
        work = Path(tmp)
        data_root = ensure_demo_dataset(work / "demo")
        overrides = {"weights_dir": str(work / "weights"), **overrides}
        first = args.categories.split(",")[0]
        if "efficientad" in args.models:
            print("warm-up (untimed): ", end="")
            run_benchmark(work, data_root, "none", first, "efficientad", overrides)
        in_process, in_cells = run_benchmark(
            work, data_root, "none", args.categories, args.models, overrides
        )
        cluster, cluster_cells = run_benchmark(
            work, data_root, f"local:{args.workers}", args.categories, args.models, overrides
        )
    print(f"in-process / local:{args.workers} wall-time ratio: {in_process / cluster:.2f}")
    table = Table(
        "cluster_speed",
        f"{args.models} x {args.categories}, quick profile, in the flow's process and on a "
        f"local Dask cluster of {args.workers} workers",
        ["--cluster", "wall s", "fit s per cell"],
    )
    for name, seconds, cells in (("none", in_process, in_cells),
                                 (f"local:{args.workers}", cluster, cluster_cells)):  # fmt: skip
        table.add(name, round(seconds), ", ".join(f"{m}/{c} {f:.0f}" for m, c, f, _ in cells))
    table.notes.append(f"ratio {in_process / cluster:.2f}; overrides {args.overrides or 'none'}")
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
