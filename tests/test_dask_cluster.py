"""The benchmark on a real Dask cluster: a `dask scheduler` and two `dask worker` processes
(one thread each) on 127.0.0.1, started and killed by PID.

1. Two demo categories x PatchCore (tiny) run on the cluster: each cell on its own
   worker, metrics equal to an in-process run on the same data, one row set per cell.
2. One worker is killed while its cell trains: Dask reschedules the cell on the
   survivor, and DuckDB holds every cell once, none partial or duplicated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from scripts.stack import free_port
from tasks.data.demo_data import ensure_demo_dataset
from tests.cheap_inference import FAST_INFERENCE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CATEGORIES = ("demo_grass", "demo_grid")
TINY = {
    "patchcore": {"image_size": 64, "coreset_sampling_ratio": 0.05},
    "latency_iters": 3,
    "overlays": 0,
    "max_attempts": 1,
    "inference": FAST_INFERENCE,
}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
    env.pop("PREFECT_API_URL", None)  # each flow run brings its own ephemeral API
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    env["PREFECT_TASKS_REFRESH_CACHE"] = "true"  # every run trains; none reuses a cached cell
    # one queued cell per one-thread worker, so two cells land on two idle workers
    env["DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"] = "1.0"
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    # own session: killing its process group ends a nanny together with its worker
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class DaskCluster:
    """A scheduler and named workers, each a process group this test owns."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = _start(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-dashboard",
            ],
            logs / "scheduler.log",
        )
        self.workers: dict[str, subprocess.Popen] = {}

    def add_worker(self, name: str) -> None:
        self.workers[name] = _start(
            [
                str(BIN / "dask"),
                "worker",
                self.address,
                "--name",
                name,
                "--nthreads",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
            ],
            self.logs / f"worker-{name}.log",
        )

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)

    def kill_worker(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait(timeout=20)

    def down(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            _stop(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path_factory.mktemp("dask-logs"))
    try:
        cluster.add_worker("w0")
        cluster.add_worker("w1")
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "demo")


def _benchmark(data: Path, out: Path, cluster: str, **env: str) -> subprocess.Popen:
    """`python -m flows.benchmark` on the demo categories with its own DuckDB file."""
    out.mkdir(parents=True, exist_ok=True)
    args = [
        *(sys.executable, "-m", "flows.benchmark", "--dataset", "demo"),
        *("--data-root", str(data), "--categories", ",".join(CATEGORIES)),
        *("--models", "patchcore", "--overrides", json.dumps(TINY), "--cluster", cluster),
        *("--db", str(out / "bench.duckdb"), "--output-dir", str(out / "runs")),
        *("--reports-dir", str(out / "reports")),
    ]
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=_env(PREFECT_HOME=str(out / "prefect-home"), **env),
        stdout=(out / "flow.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 600) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        _stop(proc)
    log = (out / "flow.log").read_text()
    assert proc.returncode == 0, log[-4000:]


def _rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def _metrics(db: Path) -> dict[tuple[str, str], float | None]:
    rows = _rows(db, "select category, metric, value from metrics order by all")
    return {(c, m): v for c, m, v in rows}


def _scores(db: Path) -> dict[tuple[str, str], float]:
    rows = _rows(db, "select category, path, score from scores")
    return {(c, p): s for c, p, s in rows}


def _assert_one_row_set_per_cell(db: Path) -> None:
    assert _rows(db, "select count(*), count(distinct run_id) from runs") == [(1, 1)]
    per_cell = _rows(
        db,
        """select r.model, r.category, count(distinct r.written_at),
                  (select count(*) - count(distinct metric) from metrics m
                   where m.category = r.category),
                  (select count(*) from training_attempts a where a.category = r.category)
           from results r group by all order by all""",
    )
    assert [(m, c) for m, c, *_ in per_cell] == [("patchcore", c) for c in CATEGORIES]
    for model, category, writes, duplicate_metrics, attempts in per_cell:
        assert writes == 1, f"{model}/{category} written {writes} times"
        assert duplicate_metrics == 0, f"{model}/{category} has duplicated metric rows"
        assert attempts == 1, f"{model}/{category} has {attempts} attempts"
    assert _rows(db, "select count(*) from results") == [(len(CATEGORIES),)]


def test_cells_run_on_two_workers_and_match_an_in_process_run(cluster, demo, tmp_path):
    local, remote = tmp_path / "in-process", tmp_path / "cluster"
    # both at once: their start-up (imports, Prefect API) overlaps
    runs = [(local, _benchmark(demo, local, "none"))]
    runs.append((remote, _benchmark(demo, remote, cluster.address)))
    try:
        for out, proc in runs:
            _finish(proc, out)
    finally:
        for _, proc in runs:
            _stop(proc)

    workers = dict(_rows(remote / "bench.duckdb", "select category, worker from results"))
    assert sorted(w.split("@")[0] for w in workers.values()) == ["w0", "w1"], workers
    assert all("@tcp://127.0.0.1:" in w for w in workers.values()), workers
    (in_process,) = {w for (w,) in _rows(local / "bench.duckdb", "select worker from results")}
    assert in_process.split(":")[-1].isdigit()  # host:pid of the flow's own process

    # Dask workers run torch on one thread, the flow's process on all cores: sums differ
    # in their last bits (AUPRO moved by 2e-6 on demo_grid), rankings do not
    expected, got = _metrics(local / "bench.duckdb"), _metrics(remote / "bench.duckdb")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert expected[(CATEGORIES[0], "image_auroc")] is not None
    expected_scores, got_scores = _scores(local / "bench.duckdb"), _scores(remote / "bench.duckdb")
    assert got_scores.keys() == expected_scores.keys()
    for key, value in expected_scores.items():
        assert got_scores[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    _assert_one_row_set_per_cell(remote / "bench.duckdb")

    log = (remote / "flow.log").read_text()
    for category in CATEGORIES:
        assert f"patchcore/{category}: image AUROC" in log  # one line per finished cell


def test_a_cell_whose_worker_is_killed_completes_on_the_survivor(cluster, demo, tmp_path):
    out = tmp_path / "kill"
    flow = _benchmark(demo, out, cluster.address)
    try:
        # a cell's folder appears once its worker has checked the paths and starts training
        deadline = time.monotonic() + 300
        started: list[Path] = []
        while len(started) < len(CATEGORIES) and time.monotonic() < deadline:
            assert flow.poll() is None, (out / "flow.log").read_text()[-4000:]
            started = [p for c in CATEGORIES for p in (out / "runs").glob(f"*/patchcore/{c}")]
            time.sleep(0.2)
        assert len(started) == len(CATEGORIES), "the cells never started"
        cluster.kill_worker("w0")
    except BaseException:
        _stop(flow)
        raise
    _finish(flow, out)

    db = out / "bench.duckdb"
    workers = {w.split("@")[0] for (w,) in _rows(db, "select worker from results")}
    assert workers == {"w1"}, f"both cells belong on the survivor, got {workers}"
    assert _rows(db, "select status from runs") == [("completed",)]
    _assert_one_row_set_per_cell(db)


def test_an_unreachable_scheduler_fails_the_run_naming_it(demo, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    proc = _benchmark(demo, tmp_path, address, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s")
    try:
        proc.wait(timeout=600)
    finally:
        _stop(proc)
    assert proc.returncode == 1
    assert address in (tmp_path / "flow.log").read_text()
    assert _rows(tmp_path / "bench.duckdb", "select status from runs") == [("failed",)]
    assert _rows(tmp_path / "bench.duckdb", "select count(*) from results") == [(0,)]
