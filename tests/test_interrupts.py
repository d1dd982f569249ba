"""A real `python -m flows.benchmark` stopped by SIGINT (Ctrl-C to its process group),
SIGTERM (to its pid, as `kill` or a Prefect worker sends it) or SIGKILL, while an
EfficientAD cell trains: it stops within the stated time, the in-flight cell and the run
are recorded `cancelled` (after SIGKILL: `crashed`, by the next run), completed cells are
kept, and no process it started is left: its temporary Prefect server, a LocalCluster's
worker. The EfficientAD cell has far more steps than it can train before the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from scripts.stack import descendants
from tests.cheap_inference import FAST_INFERENCE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "demo_grid"
STOPS_WITHIN_S = 30.0  # the "within about 30 s" of the signal
NO_PROCESS_LEFT_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """One weights cache for the module: EfficientAD's fallback teacher is distilled once."""
    return tmp_path_factory.mktemp("weights")


def _overrides(weights: Path) -> str:
    return json.dumps(
        {
            "patchcore": {"image_size": 64},
            "efficientad": {"max_steps": 200_000, "teacher_distill_steps": 20},
            "latency_iters": 3,
            "overlays": 0,
            "inference": FAST_INFERENCE,
            "weights_dir": str(weights),
        }
    )


def _start(tmp: Path, demo_root: Path, weights: Path, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp / "prefect-home"),
        PYTHONUNBUFFERED="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # 2 loaded cores
    )
    env.pop("PREFECT_API_URL", None)
    command = [
        *(sys.executable, "-m", "flows.benchmark", "--data-root", str(demo_root)),
        *("--categories", CATEGORY, "--overrides", _overrides(weights)),
        *("--db", str(tmp / "bench.duckdb"), "--output-dir", str(tmp / "runs")),
        *("--reports-dir", str(tmp / "reports"), *args),
    ]
    # a session of its own, as a terminal gives a command: Ctrl-C goes to its group
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=(tmp / "flow.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _rows(db: Path, sql: str) -> list[tuple]:
    """The rows, once the flow lets go of the file for a moment (it writes often)."""
    for _ in range(600):
        try:
            with duckdb.connect(str(db), read_only=True) as con:
                return con.execute(sql).fetchall()
        except (duckdb.IOException, duckdb.CatalogException):
            time.sleep(0.1)
    raise AssertionError(f"{db} stayed locked")


def _cells(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    return dict(_rows(db, "SELECT model, status FROM cells"))


def _wait_for(proc: subprocess.Popen, tmp: Path, ready, what: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        log = (tmp / "flow.log").read_text()
        assert proc.poll() is None, (
            f"the run ended ({proc.returncode}) before {what}:\n{log[-3000:]}"
        )
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{log[-3000:]}"
        time.sleep(1)


def _session(sid: int) -> list[int]:
    """Running processes of session `sid` (those that left the flow's tree too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in "ZX":
                found.append(int(entry.name))
    return found


def _started_by(proc: subprocess.Popen) -> set[int]:
    """Every process the run started, the temporary server (a session of its own) and
    Dask's workers included."""
    return (set(descendants(proc.pid)) | set(_session(proc.pid))) - {proc.pid}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _assert_none_left(pids: set[int], tmp: Path) -> None:
    deadline = time.monotonic() + NO_PROCESS_LEFT_WITHIN_S
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in pids if _alive(p)}
    for pid in left:  # the test's own cleanup; the assertion below still fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}\n{(tmp / 'flow.log').read_text()[-2000:]}"


def _signal_and_wait(proc: subprocess.Popen, send) -> tuple[int, float]:
    started = time.monotonic()
    send()
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return code, time.monotonic() - started


def test_ctrl_c_cancels_the_cell_in_flight_keeps_the_completed_one_and_leaves_nothing(
    tmp_path, demo_root, weights
):
    db = tmp_path / "bench.duckdb"
    proc = _start(tmp_path, demo_root, weights, "--models", "patchcore,efficientad")
    in_flight = {"patchcore": "completed", "efficientad": "running"}
    _wait_for(
        proc, tmp_path, lambda: _cells(db) == in_flight, "PatchCore stored, EfficientAD running"
    )
    time.sleep(3)  # well inside EfficientAD's training
    children = _started_by(proc)
    assert children, "the run started no temporary Prefect server"

    code, took = _signal_and_wait(proc, lambda: os.killpg(proc.pid, signal.SIGINT))

    log = (tmp_path / "flow.log").read_text()
    assert code == 130, log[-3000:]  # as a shell reports a process ended by SIGINT
    assert took < STOPS_WITHIN_S, f"stopped {took:.0f} s after Ctrl-C"
    ((status, error),) = _rows(db, "SELECT status, error FROM runs")
    assert (status, error) == ("cancelled", "interrupted by SIGINT")
    cells = {m: (s, e, start is not None, end is not None)
             for m, s, e, start, end in _rows(db, "SELECT model, status, error, started_at, "
                                                  "ended_at FROM cells")}  # fmt: skip
    assert cells["patchcore"] == ("completed", None, True, True)
    assert (
        cells["efficientad"][0] == "cancelled"
        and "interrupted by SIGINT" in cells["efficientad"][1]
    )
    assert cells["efficientad"][2:] == (True, True)  # it had started, and it ended
    stored = dict(_rows(db, "SELECT model, count(*) FROM metrics GROUP BY model"))
    assert set(stored) == {"patchcore"} and stored["patchcore"] >= 5  # whole, and kept
    assert list((tmp_path / "runs").glob(f"*/patchcore/{CATEGORY}/model.ckpt"))
    assert not list((tmp_path / "runs").glob("*/efficientad/*")), "the cancelled cell's files"
    _assert_none_left(children, tmp_path)


def test_sigterm_stops_a_run_on_a_local_cluster_and_its_workers(tmp_path, demo_root, weights):
    db = tmp_path / "bench.duckdb"
    proc = _start(tmp_path, demo_root, weights, "--models", "efficientad", "--cluster", "local:1")
    log = tmp_path / "flow.log"
    _wait_for(proc, tmp_path, lambda: f"efficientad/{CATEGORY}: preparing data" in log.read_text(),
              "EfficientAD on the Dask worker")  # fmt: skip
    time.sleep(5)
    children = _started_by(proc)
    assert len(children) >= 2, "expected the temporary server and a Dask worker"

    code, took = _signal_and_wait(proc, lambda: os.kill(proc.pid, signal.SIGTERM))

    assert code == 143, log.read_text()[-3000:]
    assert took < STOPS_WITHIN_S, f"stopped {took:.0f} s after SIGTERM"
    assert _rows(db, "SELECT status, error FROM runs") == [("cancelled", "interrupted by SIGTERM")]
    ((status, error, started),) = _rows(db, "SELECT status, error, started_at FROM cells")
    assert status == "cancelled" and "interrupted by SIGTERM" in error
    assert started is not None  # the cluster said it was running: in flight, not "not started"
    assert _rows(db, "SELECT count(*) FROM results") == [(0,)]
    _assert_none_left(children, tmp_path)


def test_a_killed_run_leaves_no_process_and_the_next_run_marks_it_crashed(
    tmp_path, demo_root, weights
):
    db = tmp_path / "bench.duckdb"
    proc = _start(tmp_path, demo_root, weights, "--models", "efficientad")
    _wait_for(
        proc, tmp_path, lambda: _cells(db) == {"efficientad": "running"}, "EfficientAD running"
    )
    children = _started_by(proc)
    assert children, "the run started no temporary Prefect server"
    ((killed_run, pid),) = _rows(db, "SELECT run_id, pid FROM runs")
    assert pid == proc.pid

    proc.kill()
    proc.wait(timeout=60)
    _assert_none_left(children, tmp_path)  # the server dies with the flow's process
    assert _rows(db, "SELECT status FROM runs") == [("running",)]  # nothing could record it

    # the next run on the store (here refused at its gate, before any training)
    nxt = subprocess.run(
        [sys.executable, "-m", "flows.benchmark", "--dataset", "folder",
         "--data-root", str(tmp_path / "missing"), "--db", str(db),
         "--output-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
             "PREFECT_HOME": str(tmp_path / "prefect-home"),
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"},
    )  # fmt: skip
    assert nxt.returncode == 1, nxt.stdout[-2000:] + nxt.stderr[-2000:]
    runs = {r: (s, e, end, beat) for r, s, e, end, beat in _rows(
        db, "SELECT run_id, status, error, ended_at, heartbeat_at FROM runs")}  # fmt: skip
    status, error, ended, heartbeat = runs.pop(killed_run)
    assert status == "crashed"
    assert f"its process (pid {proc.pid} on " in error and "is gone" in error
    assert ended == heartbeat  # when: its last sign of life
    assert [s for s, *_ in runs.values()] == ["failed_validation"]
    ((cell_status, cell_error),) = _rows(
        db, f"SELECT status, error FROM cells WHERE run_id = '{killed_run}'"
    )
    assert cell_status == "crashed" and "is gone" in cell_error
