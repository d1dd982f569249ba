"""End to end with every part real: a Prefect server on a free loopback port, a process
worker, deployments from prefect.yaml, `prefect deployment run`, real anomalib training,
a real DuckDB file and the report opened in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import duckdb
import pytest
from browser import assert_report_ok, check_report_in_browser

from scripts.stack import Stack, descendants, free_port
from tasks.data.demo_data import ensure_demo_dataset
from tests.cheap_inference import FAST_INFERENCE

pytestmark = pytest.mark.slow

CATEGORY = "demo_grid"
TINY = {
    "efficientad": {"max_steps": 6, "teacher_distill_steps": 20},
    "patchcore": {"image_size": 128},
    "latency_iters": 3,
    "max_attempts": 2,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(state_dir=tmp_path_factory.mktemp("stack"), port=free_port())
    stack.up()
    yield stack
    stack.down()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    return ensure_demo_dataset(root)


def _run(stack: Stack, name: str, tmp: Path, **params):
    params.setdefault("db", str(tmp / "bench.duckdb"))
    return stack.run_deployment(name, params, timeout=1500)


def test_demo_deployment_completes_and_stores_results(stack, demo_root, tmp_path):
    # as `make demo` runs it: the terminal gets one line per finished cell while it runs
    lines: list[str] = []
    params = {
        "db": str(tmp_path / "bench.duckdb"),
        "data_root": str(demo_root),
        "categories": [CATEGORY],
        "overrides": TINY,
        "output_dir": str(tmp_path / "runs"),
        "reports_dir": str(tmp_path / "reports"),
    }
    state = stack.run_and_follow("anomaly-benchmark/demo", params, 1500, lines.append, poll=1)
    assert state == "Completed", "\n".join(lines)
    for model in ("patchcore", "efficientad"):
        assert [line for line in lines if f" {model}/{CATEGORY}: image AUROC " in line], lines
    assert any("report written to" in line for line in lines), lines
    assert not any("step 1/" in line for line in lines), "per-step progress belongs in the UI"

    with duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True) as con:
        ((run_id, status),) = con.execute("select run_id, status from runs").fetchall()
        assert status == "completed"
        image_auroc = dict(
            con.execute(
                "select model, value from metrics where run_id = ? and metric = 'image_auroc'"
                " and category = ?",
                [run_id, CATEGORY],
            ).fetchall()
        )
        assert set(image_auroc) == {"patchcore", "efficientad"}
        assert all(0.0 <= v <= 1.0 for v in image_auroc.values())
        assert (
            con.execute(
                "select count(*) from validations where run_id = ? and not passed", [run_id]
            ).fetchone()[0]
            == 0
        )
        assert (
            con.execute("select count(*) from scores where run_id = ?", [run_id]).fetchone()[0] > 0
        )

    report = tmp_path / "reports" / run_id / "report.html"
    assert report.exists() and (tmp_path / "reports" / "latest.html").exists()
    seen = check_report_in_browser(
        report, tmp_path / "bench.duckdb", screenshot=Path("test-artifacts/e2e-report.png")
    )
    assert_report_ok(seen)
    assert seen["cells_checked"] > 0


def test_deployment_on_invalid_data_fails_without_training(stack, demo_root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_root, broken)
    category = broken / CATEGORY
    truncated = next((category / "train" / "good").glob("*.png"))
    truncated.write_bytes(truncated.read_bytes()[:200])
    mask = next((category / "ground_truth").rglob("*_mask.png"))
    mask.unlink()

    result = _run(
        stack,
        "anomaly-benchmark/demo",
        tmp_path,
        dataset="folder",
        data_root=str(broken),
        categories=[CATEGORY],
        overrides=TINY,
        output_dir=str(tmp_path / "runs"),
        reports_dir=str(tmp_path / "reports"),
    )
    assert result.returncode != 0
    assert "Failed" in result.stdout + result.stderr

    with duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True) as con:
        ((run_id, status),) = con.execute("select run_id, status from runs").fetchall()
        assert status == "failed_validation"
        failed = {
            row[0]
            for row in con.execute(
                "select rule from validations where run_id = ? and not passed", [run_id]
            ).fetchall()
        }
        assert failed, "the gate stored no failed rule"
        for table in ("training_attempts", "metrics", "scores"):
            assert (
                con.execute(f"select count(*) from {table} where run_id = ?", [run_id]).fetchone()[
                    0
                ]
                == 0
            ), table

    artifact = stack.prefect("artifact", "inspect", "validation-summary", check=False)
    assert "FAILED" in artifact.stdout


def _stored_models(db: Path) -> set[str]:
    """Models with stored metrics so far; the flow may hold the file for a moment."""
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            return {row[0] for row in con.execute("select distinct model from metrics").fetchall()}
    except (duckdb.IOException, duckdb.CatalogException):
        return set()


def test_killed_worker_then_rerun_keeps_the_stored_cells_of_the_dead_run(
    stack, demo_root, tmp_path
):
    db = tmp_path / "bench.duckdb"
    params = {
        "data_root": str(demo_root),
        "categories": ["demo_brick"],
        # the subject is the crash and the rerun: one cheap inference path suffices
        "overrides": {**TINY, "inference": FAST_INFERENCE},
        "db": str(db),
        "output_dir": str(tmp_path / "runs"),
        "reports_dir": str(tmp_path / "reports"),
    }
    args = ["deployment", "run", "anomaly-benchmark/demo"]
    for key, value in params.items():
        args += ["--param", f"{key}={json.dumps(value)}"]
    stack.prefect(*args)  # no --watch: kill the worker while the run is in flight
    deadline = time.monotonic() + 600
    while "patchcore" not in _stored_models(db):
        assert time.monotonic() < deadline, "the first run never stored a result"
        time.sleep(2)
    # The worker dies as on a crash, and its flow run with it: Prefect starts flow runs in
    # their own session, so a signal to the worker's group does not reach them, and on
    # SIGTERM a worker waits for its runs and did not always exit afterwards.
    worker = stack.pid("worker")
    flow_runs = descendants(worker)
    assert flow_runs, "the worker runs no flow run to kill"
    os.killpg(worker, signal.SIGKILL)
    for pid in flow_runs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while stack.pid("worker"):
        assert time.monotonic() < deadline, "the worker did not exit on SIGKILL"
        time.sleep(0.5)
    stack.up(deploy=False)  # a new worker

    result = stack.run_deployment("anomaly-benchmark/demo", params, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with duckdb.connect(str(db), read_only=True) as con:
        runs = dict(con.execute("select status, count(*) from runs group by status").fetchall())
        assert runs == {"crashed": 1, "completed": 1}
        per_key = dict(
            con.execute(
                "select r.status, count(*) from metrics m join runs r using (run_id)"
                " where metric = 'image_auroc' group by r.status"
            ).fetchall()
        )
        assert per_key["completed"] == 2  # both models once
        # the dead run keeps the cells it stored before the kill, each one whole
        assert per_key["crashed"] >= 1
        metric_names = {
            status: {
                row[0]
                for row in con.execute(
                    "select metric from metrics m join runs r using (run_id)"
                    " where r.status = ? and m.model = 'patchcore'",
                    [status],
                ).fetchall()
            }
            for status in ("crashed", "completed")
        }
        assert metric_names["crashed"] == metric_names["completed"]  # whole, not partial


def test_a_deployment_run_with_blank_or_repeated_parameters_is_refused_by_the_flow(stack, tmp_path):
    """`prefect deployment run --param` as a cron line with an unset variable would send
    it: Prefect's type check lets it through, the flow's own check refuses it, naming the
    parameters, before anything is recorded or trained. (A NaN number Prefect refuses
    itself: "'nan' is not of type 'number'".)"""
    db = tmp_path / "bench.duckdb"
    result = _run(
        stack,
        "anomaly-benchmark/demo",
        tmp_path,
        categories=[""],
        models=["patchcore", "patchcore"],
    )
    assert result.returncode != 0 and "Failed" in result.stdout + result.stderr
    with stack.client() as client:
        (run,) = [
            r for r in client.read_flow_runs()
            if r.parameters.get("db") == str(db)
        ]  # fmt: skip
        message = run.state.message or ""
    assert "categories: item 1 of [''] is blank" in message, message
    assert "models: 'patchcore' is named twice" in message, message
    assert not db.exists()


def test_a_run_cancelled_from_the_ui_ends_cancelled_and_keeps_nothing_running(
    stack, demo_root, tmp_path
):
    """Cancel in the UI = the worker sends SIGTERM to the flow-run process: the cell in
    flight and the run are recorded cancelled, the flow run ends Cancelled, its process
    exits."""
    db = tmp_path / "bench.duckdb"
    params = {
        "data_root": str(demo_root),
        "categories": [CATEGORY],
        "models": ["efficientad"],
        "overrides": {**TINY, "efficientad": {"max_steps": 200_000, "teacher_distill_steps": 20},
                      "inference": FAST_INFERENCE},
        "db": str(db),
        "output_dir": str(tmp_path / "runs"),
        "reports_dir": str(tmp_path / "reports"),
    }  # fmt: skip
    with stack.client() as client:
        deployment = client.read_deployment_by_name("anomaly-benchmark/demo")
        run = client.create_flow_run_from_deployment(deployment.id, parameters=params)
    deadline = time.monotonic() + 600
    while _cell_status(db) != "running":
        assert time.monotonic() < deadline, "the EfficientAD cell never started"
        time.sleep(2)
    flow_runs = descendants(stack.pid("worker"))
    assert flow_runs, "the worker runs no flow-run process"

    stack.prefect("flow-run", "cancel", str(run.id))

    deadline = time.monotonic() + 120
    with stack.client() as client:
        while not (state := client.read_flow_run(run.id).state).is_final():
            assert time.monotonic() < deadline, f"still {state.name} 120 s after cancelling"
            time.sleep(1)
    assert state.is_cancelled(), (state.name, state.message)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select status, error from runs").fetchall() == [
            ("cancelled", "interrupted by SIGTERM")
        ]
        ((status, error),) = con.execute("select status, error from cells").fetchall()
    assert status == "cancelled" and "interrupted by SIGTERM" in error
    deadline = time.monotonic() + 30
    while [p for p in flow_runs if Path(f"/proc/{p}").exists()]:
        assert time.monotonic() < deadline, "the flow-run process outlived its cancellation"
        time.sleep(0.5)


def _cell_status(db: Path) -> str | None:
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            row = con.execute("select status from cells").fetchone()
    except (duckdb.IOException, duckdb.CatalogException):
        return None
    return row[0] if row else None


def test_nightly_waits_paused_on_the_gpu_pool(stack):
    """The paper-profile nightly never fires on the CPU-only demo stack: its schedule is
    created paused and its pool is one no worker of this stack polls."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {PREFECT_API_URL: stack.api_url, PREFECT_API_AUTH_STRING: stack.auth_string()}
    with (
        temporary_settings(settings),
        get_client(sync_client=True) as client,
    ):
        nightly = client.read_deployment_by_name("anomaly-benchmark/mvtec-nightly")
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
        )
        demo = client.read_deployment_by_name("anomaly-benchmark/demo")
    assert nightly.work_pool_name == "gpu-pool" != demo.work_pool_name
    assert [s.active for s in nightly.schedules] == [False]
    assert nightly.parameters["profile"] == "paper"
    assert nightly.parameters["cluster"] == "cuda"
    assert nightly.parameters["categories"] == ["all"]
    assert runs == []
