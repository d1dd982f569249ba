"""The DuckDB results store: schema and migrations, round trip, atomic replacement, waiting
for a file another process holds, run comparison."""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta

import duckdb
import pytest
from store_samples import model_result, validation_report
from store_v1 import create_v1_store

from tasks.results.store.migrations import MIGRATIONS, SCHEMA_VERSION, SchemaError
from tasks.results.store.result_store import ResultStore, StoreBusy
from tasks.results.store.schema import RESULT_TABLES
from tasks.results.types import LatencyResult

T0 = datetime(2025, 3, 1, 12, 0, 0)
DATA_HASH = "ab" * 32


def start(
    store: ResultStore,
    run_id: str,
    *,
    dataset="demo",
    profile="quick",
    day=0,
    data_root="data/demo",
    dataset_hash=DATA_HASH,
):
    store.start_run(
        run_id,
        flow_run_id=f"flow-{run_id}",
        dataset=dataset,
        data_root=data_root,
        dataset_hash=dataset_hash,
        categories=["demo_grid", "demo_leather"],
        models=["patchcore", "efficientad"],
        profile=profile,
        started_at=T0 + timedelta(days=day),
        environment={"python": "3.11"},
    )


def count(store: ResultStore, table: str, **where) -> int:
    clause = " AND ".join(f"{k} = ?" for k in where) or "true"
    sql = f"SELECT count(*) AS n FROM {table} WHERE {clause}"
    return int(store.query(sql, list(where.values()))["n"][0])


def test_schema_creation_is_idempotent(tmp_path):
    db = tmp_path / "nested" / "results.duckdb"
    ResultStore(db)
    store = ResultStore(db)  # second open must not fail nor duplicate anything
    start(store, "r1")
    ResultStore(db)
    tables = set(store.query("SELECT table_name FROM information_schema.tables")["table_name"])
    assert {"runs", "validations", *RESULT_TABLES, "metrics_wide"} <= tables
    assert count(store, "runs") == 1


def test_round_trip_of_a_result(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "r1")
    store.write_validations("r1", validation_report())
    result = model_result("efficientad", "demo_grid", image_auroc=0.93, overlay_dir=tmp_path)
    store.write_result("r1", result)
    store.write_artifact("r1", "efficientad", "demo_grid", "checkpoint", tmp_path / "m.ckpt")
    store.finish_run("r1", "completed")

    run = store.query("SELECT * FROM runs").iloc[0]
    assert run["status"] == "completed" and run["ended_at"] is not None
    assert list(run["categories"]) == ["demo_grid", "demo_leather"]
    assert run["dataset_hash"] == "ab" * 32  # taken from the validation report
    assert list(run["dataset_notes"]) == ["demo dataset: synthetic textures"]

    wide = store.query("SELECT * FROM metrics_wide WHERE run_id = 'r1'").iloc[0]
    assert wide["image_auroc"] == pytest.approx(0.93)
    assert wide["pixel_auroc"] == pytest.approx(0.91)
    assert wide["aupro"] == pytest.approx(0.8)
    f1 = store.query("SELECT note FROM metrics WHERE metric = 'image_f1'")["note"][0]
    assert f1 == "method: adaptive threshold"

    attempts = store.query("SELECT * FROM training_attempts ORDER BY attempt")
    assert list(attempts["end_reason"]) == ["loss_spike", "completed"]
    assert list(attempts["chosen"]) == [False, True]
    assert attempts["spike_step"][0] == 60 and attempts["spike_loss_name"][0] == "st"
    n_losses = sum(len(a.losses) for a in result.attempts)
    assert count(store, "losses") == n_losses
    assert count(store, "roc_points", level="image") == 21
    assert count(store, "scores", label=1) == 3
    latency = store.query("SELECT * FROM latency ORDER BY idx")
    assert list(latency["batch_size"]) == [1, 8] and latency["p50_ms"][0] == 8.25
    kinds = set(store.query("SELECT kind FROM artifacts")["kind"])
    assert kinds == {"overlay_best_0", "overlay_worst_0", "checkpoint"}
    row = store.query("SELECT * FROM results").iloc[0]
    assert row["weights_source"] == "pretrained" and not row["paper_configuration"]
    rules = store.query("SELECT * FROM validations ORDER BY rule")
    assert list(rules["passed"]) == [True, False]
    assert list(rules["examples"][1])[1] == "<script>alert(1)</script>"


def test_non_finite_losses_are_kept(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "r1")
    result = model_result("efficientad", "demo_grid", image_auroc=0.9)
    result.attempts[0].losses.append((999, "st", float("nan")))
    store.write_result("r1", result)
    values = store.query("SELECT value FROM losses WHERE step = 999")["value"]
    assert len(values) == 1 and math.isnan(values[0])
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM losses WHERE isnan(value)").fetchone()[0] == 1


def test_unavailable_metrics_are_null_not_zero(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "r1")
    store.write_result("r1", model_result("patchcore", "demo_leather", image_auroc=0.97))
    rows = store.query("SELECT * FROM metrics ORDER BY metric").set_index("metric")
    for metric in ("pixel_auroc", "pixel_f1", "aupro"):
        assert rows.loc[metric, "available"] == False  # noqa: E712 (numpy bool)
        assert math.isnan(rows.loc[metric, "value"])  # NULL comes back as NaN in pandas
        assert rows.loc[metric, "note"].startswith("not available: ")
        assert "no masks" in rows.loc[metric, "note"]
    assert rows.loc["image_auroc", "available"] == True  # noqa: E712
    nulls = store.query("SELECT count(*) AS n FROM metrics WHERE value IS NULL")["n"][0]
    assert nulls == 3
    # a metric missing from the dict still gets a row, so the wide view is complete
    result = model_result("efficientad", "demo_grid", image_auroc=0.9)
    del result.metrics["aupro"]
    store.write_result("r1", result)
    aupro = store.query(
        "SELECT value, available FROM metrics WHERE model='efficientad' AND metric='aupro'"
    )
    assert len(aupro) == 1 and not aupro["available"][0]


def test_failed_write_leaves_the_previous_rows_intact(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "r1")
    store.write_result("r1", model_result("efficientad", "demo_grid", image_auroc=0.93))
    before = {t: count(store, t) for t in RESULT_TABLES}

    broken = model_result("efficientad", "demo_grid", image_auroc=0.5)
    # latency is inserted after results, attempts, losses, metrics, roc points and scores:
    # a value DuckDB cannot cast makes the transaction fail half-way through.
    bad = LatencyResult(**{**vars(broken.latency[0]), "batch_size": "not a number"})
    broken = replace(broken, latency=[bad])
    with pytest.raises(duckdb.Error):
        store.write_result("r1", broken)

    assert {t: count(store, t) for t in RESULT_TABLES} == before
    auroc = store.query("SELECT image_auroc FROM metrics_wide")["image_auroc"][0]
    assert auroc == pytest.approx(0.93)

    # a new key that fails leaves nothing of itself behind
    with pytest.raises(duckdb.Error):
        store.write_result("r1", replace(broken, category="demo_leather"))
    for table in RESULT_TABLES:
        assert count(store, table, category="demo_leather") == 0


def test_rerunning_the_same_run_id_does_not_duplicate(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    for _ in range(2):
        start(store, "r1")
        store.write_validations("r1", validation_report())
        store.write_result("r1", model_result("efficientad", "demo_grid", image_auroc=0.93))
        store.write_artifact("r1", "efficientad", "demo_grid", "checkpoint", "m.ckpt")
        store.finish_run("r1", "completed")
    first = {t: count(store, t) for t in ("runs", "validations", *RESULT_TABLES)}
    start(store, "r1")
    assert store.query("SELECT status, ended_at FROM runs")["status"][0] == "running"
    store.write_validations("r1", validation_report())
    store.write_result("r1", model_result("efficientad", "demo_grid", image_auroc=0.93))
    store.write_artifact("r1", "efficientad", "demo_grid", "checkpoint", "m.ckpt")
    assert {t: count(store, t) for t in ("runs", "validations", *RESULT_TABLES)} == first
    assert first["runs"] == 1 and first["metrics"] == 5


def test_closing_a_dead_run_keeps_its_stored_cells(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "dead")
    store.write_validations("dead", validation_report())
    store.write_result("dead", model_result("patchcore", "demo_grid", image_auroc=0.9))
    before = {t: count(store, t) for t in ("validations", *RESULT_TABLES)}

    assert store.close_if_running("dead", "crashed", "worker lost")
    run = store.query("SELECT * FROM runs").iloc[0]
    assert (run["status"], run["error"]) == ("crashed", "worker lost")
    assert run["ended_at"] is not None
    assert {t: count(store, t) for t in ("validations", *RESULT_TABLES)} == before
    # a run that recorded its own end keeps it
    assert not store.close_if_running("dead", "failed", "late hook")
    assert store.query("SELECT status, error FROM runs").values.tolist() == [
        ["crashed", "worker lost"]
    ]


def test_finish_run_of_an_unknown_run_fails(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    with pytest.raises(KeyError, match="never started"):
        store.finish_run("nope", "completed")


def _run_with(store, run_id, auroc, *, day, status="completed", **run):
    start(store, run_id, day=day, **run)
    store.write_result(run_id, model_result("efficientad", "demo_grid", image_auroc=auroc))
    store.finish_run(run_id, status)


def test_compare_flags_a_regression_against_the_previous_comparable_run(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    _run_with(store, "old", 0.80, day=0)
    _run_with(store, "previous", 0.95, day=1)
    _run_with(store, "failed", 0.10, day=2, status="failed")  # not completed: ignored
    _run_with(store, "other-dataset", 0.10, day=3, dataset="mvtec", data_root="/data/mvtec")
    _run_with(store, "other-profile", 0.10, day=3, profile="paper")
    _run_with(store, "current", 0.90, day=4)
    _run_with(store, "later", 0.99, day=5)  # after the current run: ignored

    table = store.compare_with_previous("current", tolerance=0.02).set_index("metric")
    image = table.loc["image_auroc"]
    assert image["previous_run_id"] == "previous"
    assert image["previous_value"] == pytest.approx(0.95)
    assert image["delta"] == pytest.approx(-0.05)
    assert bool(image["regression"])
    assert not bool(table.loc["aupro", "regression"])  # unchanged
    # a looser tolerance accepts the same drop
    loose = store.compare_with_previous("current", tolerance=0.1).set_index("metric")
    assert not loose["regression"].any()
    # a rise is never a regression, and the first run has nothing to compare with
    assert not store.compare_with_previous("previous")["regression"].any()
    first = store.compare_with_previous("old")
    assert first["previous_run_id"].isna().all() and not first["regression"].any()


def test_comparisons_are_keyed_by_the_data_read_not_the_dataset_kind(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    _run_with(store, "same-data", 0.95, day=0, dataset="folder", data_root="/parts/a")
    _run_with(store, "other-root", 0.99, day=1, dataset="folder", data_root="/parts/b")
    _run_with(
        store,
        "other-hash",
        0.99,
        day=2,
        dataset="folder",
        data_root="/parts/a",
        dataset_hash="cd" * 32,
    )
    _run_with(
        store, "crashed", 0.99, day=3, dataset="folder", data_root="/parts/a", status="crashed"
    )
    _run_with(store, "current", 0.90, day=4, dataset="folder", data_root="/parts/a")

    image = store.compare_with_previous("current").set_index("metric").loc["image_auroc"]
    assert image["previous_run_id"] == "same-data" and bool(image["regression"])
    assert list(dict.fromkeys(store.history("current")["run_id"])) == ["same-data", "current"]
    # without a dataset hash (the gate never finished) nothing is comparable
    _run_with(
        store, "unhashed", 0.5, day=5, dataset="folder", data_root="/parts/a", dataset_hash=""
    )
    assert store.compare_with_previous("unhashed")["previous_run_id"].isna().all()
    assert set(store.history("unhashed")["run_id"]) == {"unhashed"}


def test_history_lists_completed_runs_of_the_same_data_and_profile(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    for day in range(4):
        _run_with(store, f"run-{day}", 0.9 + day / 100, day=day)
    _run_with(store, "running", 0.5, day=4, status="running")
    _run_with(store, "mvtec", 0.5, day=5, dataset="mvtec", data_root="/data/mvtec")
    _run_with(store, "current", 0.95, day=6, status="incomplete")
    _run_with(store, "later", 0.5, day=7)
    trend = store.history("current", limit=3)
    # the last three up to the current run, oldest first; never running or later runs
    assert list(trend["run_id"]) == ["run-2", "run-3", "current"]
    assert list(trend["image_auroc"]) == pytest.approx([0.92, 0.93, 0.95])


def test_a_fallback_is_never_stored_as_the_paper_configuration(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "r1", profile="paper")
    claims = {"patchcore": "fallback", "efficientad": "pretrained"}
    for model, source in claims.items():
        result = model_result(model, "demo_grid", image_auroc=0.9, profile="paper")
        result.weights.update(source=source, paper_configuration=True)
        store.write_result("r1", result)
    paper = store.query("SELECT model, paper_configuration FROM results").set_index("model")
    assert not paper.loc["patchcore", "paper_configuration"]
    assert paper.loc["efficientad", "paper_configuration"]


# ---- schema versions ---------------------------------------------------------------------


def columns(path) -> dict[str, list[tuple[str, str]]]:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        tables.setdefault(table, []).append((column, data_type))
    return tables


def test_a_version_1_file_is_migrated_to_the_current_schema_and_keeps_its_rows(tmp_path):
    old, fresh = tmp_path / "old.duckdb", tmp_path / "fresh.duckdb"
    create_v1_store(old)
    ResultStore(fresh)

    store = ResultStore(old)

    assert store.schema_version() == SCHEMA_VERSION == max(MIGRATIONS)
    # the same tables, columns and types as a file created now (a column added to the
    # DDL without a migration step fails here)
    assert columns(old) == columns(fresh)
    versions = store.query("SELECT version FROM schema_version ORDER BY version")["version"]
    assert list(versions) == list(range(2, SCHEMA_VERSION + 1))
    old_run = store.query("SELECT * FROM runs WHERE run_id = 'old-run'").iloc[0]
    assert old_run["status"] == "completed" and old_run["error"] is None
    # new writes use the new columns beside the old rows
    start(store, "r2")
    store.write_result("r2", model_result("patchcore", "demo_grid", image_auroc=0.9))
    store.finish_run("r2", "incomplete", error="efficientad/demo_grid: spike")
    assert count(store, "runs") == 2 and count(store, "metrics") == 6
    assert ResultStore(old).schema_version() == SCHEMA_VERSION  # reopening changes nothing


def test_a_file_from_a_newer_release_is_refused_untouched(tmp_path):
    db = tmp_path / "new.duckdb"
    ResultStore(db)
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO schema_version VALUES (?, now(), 'future')", [SCHEMA_VERSION + 1])
    before = db.read_bytes()
    with pytest.raises(
        SchemaError, match=rf"{re.escape(str(db))}.*schema version {SCHEMA_VERSION + 1}"
    ):
        ResultStore(db)
    assert db.read_bytes() == before


def test_a_file_that_is_not_a_results_store_is_refused(tmp_path):
    db = tmp_path / "other.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(SchemaError, match=rf"{re.escape(str(db))}.*not a results store"):
        ResultStore(db)


def test_a_failed_migration_changes_nothing(tmp_path, monkeypatch):
    db = tmp_path / "old.duckdb"
    create_v1_store(db)
    broken = {**MIGRATIONS, 2: [*MIGRATIONS[2], "ALTER TABLE no_such_table ADD COLUMN x INT"]}
    monkeypatch.setattr("tasks.results.store.migrations.MIGRATIONS", broken)
    with pytest.raises(SchemaError, match=rf"{re.escape(str(db))}.*could not be migrated"):
        ResultStore(db)
    assert "schema_version" not in columns(db)
    assert [c for c, _ in columns(db)["runs"]][-1] == "environment"


# ---- another process holding the file ----------------------------------------------------


def test_a_write_waits_for_a_process_that_holds_the_file_for_3_s(tmp_path, hold_file):
    db = tmp_path / "r.duckdb"
    store = ResultStore(db)
    start(store, "r1")
    holder = hold_file(db, 3)

    store.write_result("r1", model_result("patchcore", "demo_grid", image_auroc=0.9))

    assert time.monotonic() - holder.since > 2.5  # it waited, it did not fail
    assert holder.process.wait(timeout=30) == 0
    assert count(store, "metrics") == 5


def test_a_file_held_too_long_fails_naming_it_and_its_holder(tmp_path, hold_file):
    db = tmp_path / "r.duckdb"
    store = ResultStore(db, lock_timeout_s=1)
    start(store, "r1")
    store.write_result("r1", model_result("patchcore", "demo_grid", image_auroc=0.9))
    holder = hold_file(db, 60)

    waited = time.monotonic()
    with pytest.raises(StoreBusy) as busy:
        store.write_result("r1", model_result("efficientad", "demo_grid", image_auroc=0.8))
    assert 1 <= time.monotonic() - waited < 10
    assert str(db) in str(busy.value) and f"PID {holder.process.pid}" in str(busy.value)
    with pytest.raises(StoreBusy):
        ResultStore(db, lock_timeout_s=0.5)  # opening waits the same way

    holder.release()
    assert store.query("SELECT DISTINCT model FROM metrics")["model"].tolist() == ["patchcore"]


def test_concurrent_writes_of_one_cell_in_one_process_all_land(tmp_path):
    store = ResultStore(tmp_path / "r.duckdb")
    start(store, "r1")
    errors: list[BaseException] = []

    def write() -> None:
        for _ in range(3):
            try:
                store.write_result("r1", model_result("patchcore", "demo_grid", image_auroc=0.9))
            except BaseException as err:  # noqa: BLE001 - collected for the assertion
                errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []  # a write-write conflict is rerun, not raised
    assert count(store, "metrics") == 5 and count(store, "results") == 1
