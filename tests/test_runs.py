"""The run lifecycle (tasks/runs.py) and the gate's UI artifacts (tasks/gate.py): runs that
died are labelled and keep their stored cells, hooks close a failed run, an unusable store
stops a run before training, file names cannot escape the markdown, and a benchmark run
whose store stays busy ends failed, names the file and loses nothing already stored."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
from markdown_it import MarkdownIt
from prefect.states import Cancelled, Crashed, Failed, Running
from store_samples import model_result

from checks.rule_result import RuleResult
from tasks.results.runs import (
    LEASE_EXPIRY_S,
    close_abandoned_runs,
    keep_lease,
    mark_run_ended,
    open_run,
    run_status,
)
from tasks.results.store.migrations import SCHEMA_VERSION, SchemaError
from tasks.results.store.result_store import ResultStore, StoreBusy
from tasks.results.types import ValidationReport
from tasks.runtime.process import ProcessIdentity, start_ticks, this_process
from tasks.validation.gate import validation_markdown
from tests.cheap_inference import FAST_INFERENCE


def _start(store: ResultStore, run_id: str, flow_run_id: str | None) -> None:
    store.start_run(
        run_id,
        flow_run_id=flow_run_id,
        dataset="demo",
        data_root="data/demo",
        categories=["demo_grid", "demo_leather"],
        models=["patchcore"],
        profile="quick",
        environment={},
    )


def _status(store: ResultStore) -> dict[str, tuple[str, str | None]]:
    with duckdb.connect(str(store.db_path), read_only=True) as con:
        rows = con.execute("SELECT run_id, status, error FROM runs").fetchall()
    return {run_id: (status, error) for run_id, status, error in rows}


def test_abandoned_runs_are_labelled_as_prefect_saw_them_and_keep_their_cells(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    states = {
        "f-crashed": Crashed(message="worker process exited with code -9"),
        "f-failed": Failed(message="StoreBusy: results store r.duckdb is busy"),
        "f-cancelled": Cancelled(),
        "f-running": Running(),  # still going elsewhere: left alone
    }
    for flow_run_id in [*states, "f-unknown"]:
        _start(store, flow_run_id.removeprefix("f-"), flow_run_id)
        store.write_result(
            flow_run_id.removeprefix("f-"), model_result("patchcore", "demo_grid", image_auroc=0.9)
        )
    _start(store, "local", None)  # no flow run: nothing to ask Prefect about
    _start(store, "current", "f-current")

    closed = close_abandoned_runs(store, "current", state_of=states.get)

    assert sorted(closed) == ["cancelled", "crashed", "failed"]
    status = _status(store)
    assert status["crashed"][0] == "crashed" and "exited with code -9" in status["crashed"][1]
    assert status["failed"][0] == "failed" and "r.duckdb is busy" in status["failed"][1]
    assert status["cancelled"][0] == "cancelled"
    assert "closed by run current" in status["cancelled"][1]
    for left in ("running", "unknown", "local", "current"):
        assert status[left] == ("running", None), left
    # every stored cell is still there
    per_run = store.query("SELECT run_id, count(*) AS n FROM results GROUP BY run_id")
    assert dict(per_run.itertuples(index=False)) == {
        r: 1 for r in ("crashed", "failed", "cancelled", "running", "unknown")
    }


def _hook_flow_run(db: Path, run_id: str, timeout_s: float = 30) -> SimpleNamespace:
    return SimpleNamespace(id=run_id, parameters={"db": str(db), "db_lock_timeout_s": timeout_s})


def test_the_failure_hook_closes_a_running_run_and_keeps_a_recorded_end(tmp_path):
    db = tmp_path / "r.duckdb"
    store = ResultStore(db)
    running, ended = str(uuid.uuid4()), str(uuid.uuid4())
    _start(store, running, running)
    _start(store, ended, ended)
    store.finish_run(ended, "incomplete", error="efficientad/demo_grid: loss spike")
    boom = Failed(message="Flow run encountered an exception: OSError: disk full")

    mark_run_ended(None, _hook_flow_run(db, running), boom)
    mark_run_ended(None, _hook_flow_run(db, ended), boom)

    status = _status(store)
    assert status[running] == ("failed", boom.message)
    assert status[ended] == ("incomplete", "efficientad/demo_grid: loss spike")


def test_the_hook_gives_up_on_a_busy_store_without_raising(tmp_path, hold_file, caplog):
    db = tmp_path / "r.duckdb"
    store = ResultStore(db)
    run_id = str(uuid.uuid4())
    _start(store, run_id, run_id)
    hold_file(db, 60)
    mark_run_ended(None, _hook_flow_run(db, run_id, timeout_s=0.5), Crashed())
    assert "stays 'running'" in caplog.text and str(db) in caplog.text


def test_the_hook_of_a_run_that_never_opened_the_store_creates_no_file(tmp_path):
    db = tmp_path / "results" / "bench.duckdb"
    mark_run_ended(None, _hook_flow_run(db, str(uuid.uuid4())), Failed(message="bad profile"))
    assert not db.parent.exists()


def test_run_status_says_whether_anything_was_stored():
    assert run_status([], stored=2) == "completed"
    assert run_status(["patchcore/a: busy"], stored=1) == "incomplete"
    assert run_status(["patchcore/a: busy"], stored=0) == "failed"


def test_a_store_of_a_newer_schema_stops_the_run_before_it_is_recorded(tmp_path):
    db = tmp_path / "new.duckdb"
    ResultStore(db)
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO schema_version VALUES (?, now(), 'future')", [SCHEMA_VERSION + 1])
    with pytest.raises(SchemaError, match=re.escape(str(db))):
        open_run(str(db), "demo", None, None, ["patchcore"], "quick")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_file_names_cannot_escape_the_markdown_artifact():
    evil = "000.png\n```\n# Dataset gate PASSED\n<img src=x onerror=alert(1)>"
    report = ValidationReport(
        dataset=f"folder:/data/{evil}",
        rules=[
            RuleResult(
                tool="pandera",
                category="widget",
                rule="file_opens_as_image",
                passed=False,
                failing_count=1,
                examples=[evil],
                message="every file decodes",
            )
        ],
        notes=[f"skipped {evil}"],
    )
    tokens = MarkdownIt().parse(validation_markdown(report))
    headings = [t for t in tokens if t.type == "heading_open"]
    assert len(headings) == 1  # only the real verdict
    (block,) = [t for t in tokens if t.type == "fence"]
    assert "000.png\\n```\\n# Dataset gate PASSED" in block.content
    html = MarkdownIt().render(validation_markdown(report))
    assert "<img" not in html and "Dataset gate FAILED" in html


# ---- one real benchmark run against a busy store -----------------------------------------

# Waits until the first cell is stored, then holds the file (as a DuckDB CLI would).
HOLD_AFTER_FIRST_CELL = """
import sys, time
import duckdb
db = sys.argv[1]
while True:
    try:
        with duckdb.connect(db, read_only=True) as con:
            if con.execute("SELECT count(*) FROM results").fetchone()[0]:
                break
    except duckdb.Error:
        pass
    time.sleep(0.1)
while True:
    try:
        con = duckdb.connect(db)
        break
    except duckdb.Error:
        time.sleep(0.02)
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_store_held_past_the_timeout_fails_the_run_and_loses_no_stored_cell(
    make_dataset, tmp_path, prefect_api
):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.benchmark import benchmark

    root = make_dataset(categories=("alpha", "beta"), n_train=6, defects={"scratch": 2})
    db = tmp_path / "bench.duckdb"
    params = dict(
        dataset="folder",
        data_root=str(root),
        models=["patchcore"],
        overrides={
            "patchcore": {"image_size": 64},
            "latency_iters": 3,
            "overlays": 1,
            "inference": FAST_INFERENCE,
            "weights_dir": str(tmp_path / "weights"),
        },
        db=str(db),
        output_dir=str(tmp_path / "runs"),
        reports_dir=str(tmp_path / "reports"),
        db_lock_timeout_s=3,
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AFTER_FIRST_CELL, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        # a fresh result cache: a cached cell would be stored before the holder can act
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
            state = benchmark(**params, return_state=True)
        assert holder.poll() is None and holder.stdout.readline().strip() == "held"
        assert state.is_failed()
        with pytest.raises(StoreBusy, match=rf"{re.escape(str(db))} is busy: .*PID {holder.pid}"):
            state.result()
    finally:
        holder.kill()
        holder.wait(timeout=30)

    store = ResultStore(db)
    ((first_run, status),) = store.query("SELECT run_id, status FROM runs").values.tolist()
    assert status == "running"  # the hooks found the store busy too; the next run closes it
    stored = store.query("SELECT category FROM results WHERE run_id = ?", [first_run])
    assert len(stored) == 1  # the first cell, written before the file was held

    # the next run (here refused at the gate, before any training) closes the first one
    next_state = benchmark(**{**params, "data_root": str(tmp_path / "missing")}, return_state=True)
    assert next_state.is_failed()
    status, error = store.query(
        "SELECT status, error FROM runs WHERE run_id = ?", [first_run]
    ).iloc[0]
    assert status == "failed" and str(db) in error
    after = store.query("SELECT category FROM results WHERE run_id = ?", [first_run])
    assert after["category"].tolist() == stored["category"].tolist()
    metrics = store.query("SELECT count(*) AS n FROM metrics WHERE run_id = ?", [first_run])
    assert metrics["n"][0] >= 5


# ---- runs whose process died: pid + start time, and the lease ---------------------------


def _dead_process() -> ProcessIdentity:
    """The identity of a process that ran on this host and has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        identity = replace(this_process(), pid=child.pid, started=start_ticks(child.pid))
    finally:
        child.kill()
        child.wait()
    return identity


def _start_as(store: ResultStore, run_id: str, process: ProcessIdentity) -> None:
    store.start_run(
        run_id, flow_run_id=None, dataset="demo", data_root="d", categories=["demo_grid"],
        models=["patchcore"], profile="quick", environment={}, process=process,
    )  # fmt: skip
    store.plan_cells(run_id, [("patchcore", "demo_grid")])
    store.start_cell(run_id, "patchcore", "demo_grid")


def _age_lease(store: ResultStore, run_id: str, seconds: float) -> None:
    with duckdb.connect(str(store.db_path)) as con:
        con.execute(
            "UPDATE runs SET heartbeat_at = heartbeat_at - to_seconds(?) WHERE run_id = ?",
            [seconds, run_id],
        )


def test_reconcile_marks_crashed_the_runs_whose_process_is_gone_or_whose_lease_ran_out(
    tmp_path, capsys
):
    from flows.benchmark import main

    db = tmp_path / "r.duckdb"
    store = ResultStore(db)
    me = this_process()
    _start_as(store, "killed", _dead_process())
    _start_as(store, "alive", me)
    _start_as(store, "reused-pid", replace(me, started=me.started - 1))
    _start_as(store, "other-host-lost", ProcessIdentity("elsewhere", "b", 42, 7))
    _start_as(store, "other-host-alive", ProcessIdentity("elsewhere", "b", 43, 7))
    _start_as(store, "rebooted", replace(me, boot_id="an-earlier-boot"))
    _start_as(store, "other-container", replace(me, pid_namespace="pid:[1]"))  # cannot tell
    _age_lease(store, "other-host-lost", 2 * LEASE_EXPIRY_S)
    _age_lease(store, "killed", 120)
    store.write_result("killed", model_result("patchcore", "demo_grid", image_auroc=0.9))
    store.start_cell("killed", "efficientad", "demo_grid")

    assert main(["--reconcile", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "4 dead runs closed; 3 still running" in out

    status = _status(store)
    for run_id in ("killed", "reused-pid", "rebooted"):
        assert status[run_id][0] == "crashed", run_id
        assert "is gone without recording an end" in status[run_id][1]
        assert "closed by python -m flows.benchmark --reconcile" in status[run_id][1]
    assert status["other-host-lost"][0] == "crashed"
    assert (
        "no heartbeat from pid 42 on elsewhere for over 600 s: lost" in status["other-host-lost"][1]
    )
    assert status["alive"] == status["other-host-alive"] == ("running", None)
    assert status["other-container"] == ("running", None)  # its lease is fresh
    # when: the last heartbeat, not the moment it was noticed
    ended, beat = store.query(
        "SELECT ended_at, heartbeat_at FROM runs WHERE run_id = 'killed'"
    ).iloc[0]
    assert ended == beat
    # the stored cell is kept; the one in flight died with its run
    cells = store.cells("killed")
    assert cells[("patchcore", "demo_grid")] == ("completed", None)
    in_flight, why = cells[("efficientad", "demo_grid")]
    assert in_flight == "crashed" and "the run ended crashed" in why
    assert count_rows(store, "metrics", "killed") > 0


def count_rows(store: ResultStore, table: str, run_id: str) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {table} WHERE run_id = ?", [run_id])["n"][0])


def test_a_run_renews_its_lease_while_it_lives(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    _start_as(store, "r", this_process())
    first = store.running_runs()[0].heartbeat_at
    with keep_lease(store, "r", every_s=0.2):
        time.sleep(1.5)
    assert store.running_runs()[0].heartbeat_at > first


def test_a_cancelled_run_closes_its_open_cells_and_keeps_the_stored_ones(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    _start(store, "r", None)
    store.plan_cells("r", [("patchcore", "demo_grid"), ("patchcore", "demo_leather"),
                           ("efficientad", "demo_grid")])  # fmt: skip
    store.start_cell("r", "patchcore", "demo_grid")
    store.write_result("r", model_result("patchcore", "demo_grid", image_auroc=0.9))
    store.start_cell("r", "patchcore", "demo_leather")
    store.finish_run("r", "cancelled", error="interrupted by SIGINT")
    cells = store.cells("r")
    assert cells[("patchcore", "demo_grid")] == ("completed", None)
    assert cells[("patchcore", "demo_leather")] == (
        "cancelled", "the run ended cancelled: interrupted by SIGINT"
    )  # fmt: skip
    assert cells[("efficientad", "demo_grid")] == (
        "cancelled", "not started: the run ended cancelled: interrupted by SIGINT"
    )  # fmt: skip


def test_the_hook_never_raises_on_a_nan_timeout_from_a_refused_run(tmp_path):
    db = tmp_path / "r.duckdb"
    ResultStore(db)
    flow_run = SimpleNamespace(id="x", parameters={"db": str(db), "db_lock_timeout_s": math.nan})
    mark_run_ended(None, flow_run, Failed(message="ParameterError: db_lock_timeout_s"))
