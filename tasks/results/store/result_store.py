"""The DuckDB results store: every run, validation, training attempt, metric and artifact.

The flow is the only writer; tasks return values (`ValidationReport`, `ModelResult`)
and the flow hands them here. History is kept across runs, so a run can be compared
with the previous comparable one (same dataset and profile) and the report can draw a
trend. The schema is documented in the README.

Connections are opened per call and closed at once, so other processes (the report,
a notebook) can read the file between writes. A file another process holds is waited
for, with backoff, for `lock_timeout_s` seconds; then `StoreBusy` names the file and
its holder. `write_result` replaces one (run, model, category) in a single transaction:
a crash leaves the old rows or the new ones, never a mix.

The file carries its schema version (`schema_version`); opening an older file applies
the forward `MIGRATIONS` in one transaction, and a file from a newer release is refused
with `SchemaError` before anything is written.

Example:
    >>> store = ResultStore(tmp_path / "results.duckdb")
    >>> store.start_run("r1", flow_run_id=None, dataset="demo", data_root="data/demo",
    ...                 categories=["demo_grid"], models=["patchcore"], profile="quick")
    >>> store.write_result("r1", model_result)
    >>> store.finish_run("r1", "completed")  # or ("incomplete", error="...")
    >>> store.compare_with_previous("r1")  # DataFrame: value, previous_value, delta, regression
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd

from tasks.results.types import ModelResult, ValidationReport
from tasks.runtime.hardware import cpu_name
from tasks.runtime.paths import REPO_ROOT

log = logging.getLogger(__name__)

# Metrics every result has a row for, so the wide view and the report never miss one.
CORE_METRICS = ("image_auroc", "pixel_auroc", "image_f1", "pixel_f1", "aupro")

# Tables keyed by (run_id, model, category): write_result replaces all of them at once.
RESULT_TABLES = (
    "results",
    "training_attempts",
    "recoveries",
    "stages",
    "losses",
    "metrics",
    "roc_points",
    "scores",
    "latency",
    "artifacts",
)

# The latest schema, for a new file. A change here needs a step in MIGRATIONS (and
# SCHEMA_VERSION raised) so that existing files get it too; tests/test_store.py checks
# that a migrated version-1 file ends up with exactly these columns.
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  TIMESTAMP NOT NULL,   -- UTC
    code_version VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id        VARCHAR PRIMARY KEY,
    flow_run_id   VARCHAR,
    started_at    TIMESTAMP NOT NULL,   -- UTC
    ended_at      TIMESTAMP,            -- UTC, NULL while running
    dataset       VARCHAR NOT NULL,
    data_root     VARCHAR NOT NULL,
    categories    VARCHAR[] NOT NULL,
    models        VARCHAR[] NOT NULL,
    profile       VARCHAR,
    status        VARCHAR NOT NULL,     -- running | completed | failed | ...
    code_version  VARCHAR NOT NULL,
    dataset_hash  VARCHAR NOT NULL DEFAULT '',
    dataset_notes VARCHAR[] NOT NULL DEFAULT [],
    environment   JSON,
    error         VARCHAR               -- why the run did not complete, NULL if it did
);
CREATE TABLE IF NOT EXISTS validations (
    run_id        VARCHAR NOT NULL,
    dataset       VARCHAR NOT NULL,
    category      VARCHAR NOT NULL,     -- '*' for dataset-wide rules
    tool          VARCHAR NOT NULL,     -- pandera | great_expectations | layout
    rule          VARCHAR NOT NULL,
    passed        BOOLEAN NOT NULL,
    failing_count INTEGER NOT NULL,
    examples      VARCHAR[] NOT NULL,
    message       VARCHAR NOT NULL,
    checked_at    TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id              VARCHAR NOT NULL,
    model               VARCHAR NOT NULL,
    category            VARCHAR NOT NULL,
    profile             VARCHAR,
    settings            JSON NOT NULL,
    weights             JSON NOT NULL,
    weights_source      VARCHAR NOT NULL,  -- pretrained | fallback | unknown
    paper_configuration BOOLEAN NOT NULL,
    device              VARCHAR,
    train_seconds       DOUBLE,
    status              VARCHAR NOT NULL,  -- completed | no_metrics
    notes               VARCHAR[] NOT NULL DEFAULT [],
    written_at          TIMESTAMP NOT NULL,
    cached_from         VARCHAR,           -- run that trained it, when served from cache
    worker              VARCHAR             -- Dask worker name@address, or host:pid in-process
);
CREATE TABLE IF NOT EXISTS training_attempts (
    run_id            VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    category          VARCHAR NOT NULL,
    attempt           INTEGER NOT NULL,
    seed              BIGINT,
    learning_rate     DOUBLE,
    steps             INTEGER,
    spike_step        INTEGER,
    spike_loss_name   VARCHAR,
    spike_value       DOUBLE,
    spike_magnitude   DOUBLE,
    end_reason        VARCHAR NOT NULL,
    retry_reason      VARCHAR,
    validation_metric DOUBLE,
    chosen            BOOLEAN NOT NULL,
    validation_low    DOUBLE,           -- Hanley-McNeil 95 % interval of validation_metric
    validation_high   DOUBLE,
    validation_pairs  INTEGER           -- normal x anomalous validation pairs
);
CREATE TABLE IF NOT EXISTS recoveries (
    run_id               VARCHAR NOT NULL,
    model                VARCHAR NOT NULL,
    category             VARCHAR NOT NULL,
    attempt              INTEGER NOT NULL,
    spike_step           INTEGER NOT NULL,  -- step that confirmed the spike
    onset_step           INTEGER NOT NULL,  -- its first flagged step
    restored_step        INTEGER NOT NULL,  -- checkpoint rolled back to
    skipped_batches      INTEGER NOT NULL,
    extra_steps          INTEGER NOT NULL,
    loss_name            VARCHAR,
    value                DOUBLE,
    magnitude            DOUBLE,
    reason               VARCHAR,
    learning_rate_before DOUBLE,
    learning_rate_after  DOUBLE
);
CREATE TABLE IF NOT EXISTS stages (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    stage    VARCHAR NOT NULL,      -- export | latency
    status   VARCHAR NOT NULL,      -- completed | failed | cached
    error    VARCHAR,
    seconds  DOUBLE
);
CREATE TABLE IF NOT EXISTS losses (
    run_id    VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    category  VARCHAR NOT NULL,
    attempt   INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    loss_name VARCHAR NOT NULL,
    value     DOUBLE                -- NaN/inf kept as such: they are what happened
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id    VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    category  VARCHAR NOT NULL,
    metric    VARCHAR NOT NULL,
    value     DOUBLE,               -- NULL when not available, never 0
    available BOOLEAN NOT NULL,
    note      VARCHAR               -- e.g. 'not available: no masks', 'threshold: adaptive'
);
CREATE TABLE IF NOT EXISTS roc_points (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    level    VARCHAR NOT NULL,      -- image | pixel
    idx      INTEGER NOT NULL,      -- order along the curve
    fpr      DOUBLE NOT NULL,
    tpr      DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    run_id      VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,
    category    VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    label       INTEGER,            -- 0 good, 1 anomalous
    defect_type VARCHAR,
    score       DOUBLE
);
CREATE TABLE IF NOT EXISTS latency (
    run_id         VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    category       VARCHAR NOT NULL,
    idx            INTEGER NOT NULL, -- order given by training; 0 is the headline figure
    path           VARCHAR NOT NULL, -- inference path: torch-fp32, openvino-int8, anomalib-torch...
    batch_size     INTEGER NOT NULL, -- the batch of throughput_ips; p50/p95 are batch 1
    device         VARCHAR NOT NULL,
    threads        INTEGER,
    precision      VARCHAR,
    p50_ms         DOUBLE,           -- NULL when the path failed or was skipped
    p95_ms         DOUBLE,
    throughput_ips DOUBLE,
    peak_memory_mb DOUBLE,
    image_auroc    DOUBLE,           -- this path's scores on the complete test split
    auroc_delta    DOUBLE,           -- image_auroc minus the torch-fp32 path's
    status         VARCHAR NOT NULL DEFAULT 'ok', -- ok | failed | skipped
    error          VARCHAR,          -- why it failed or was skipped
    timed_runs     INTEGER,          -- batch-1 runs behind p50/p95
    warmup_runs    INTEGER,
    setup_seconds  DOUBLE,           -- conversion, quantisation, compilation
    calibration_paths VARCHAR[],     -- int8 calibration images (training images only)
    hardware       VARCHAR           -- what it ran on: CPU name, cpus and features, or GPU name
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    kind     VARCHAR NOT NULL,      -- e.g. overlay_best_0, overlay_worst_0, checkpoint
    path     VARCHAR NOT NULL
);
"""

# Recreated after every migration, so a view always reads the current tables.
VIEWS = """
CREATE OR REPLACE VIEW metrics_wide AS
SELECT
    run_id, model, category,
    max(value) FILTER (WHERE metric = 'image_auroc') AS image_auroc,
    max(value) FILTER (WHERE metric = 'pixel_auroc') AS pixel_auroc,
    max(value) FILTER (WHERE metric = 'image_f1')    AS image_f1,
    max(value) FILTER (WHERE metric = 'pixel_f1')    AS pixel_f1,
    max(value) FILTER (WHERE metric = 'aupro')       AS aupro
FROM metrics
GROUP BY run_id, model, category;
"""

SCHEMA_VERSION = 3

# Forward migrations: MIGRATIONS[n] takes a version n-1 file to version n. Version 1 is
# the first released schema (no schema_version table). Steps run in one transaction.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        """CREATE TABLE schema_version (
               version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL,
               code_version VARCHAR NOT NULL)""",
        "ALTER TABLE runs ADD COLUMN error VARCHAR",
        "ALTER TABLE results ADD COLUMN cached_from VARCHAR",
        "ALTER TABLE results ADD COLUMN worker VARCHAR",
        "ALTER TABLE latency ALTER COLUMN p50_ms DROP NOT NULL",
        "ALTER TABLE latency ALTER COLUMN p95_ms DROP NOT NULL",
        "ALTER TABLE latency ALTER COLUMN throughput_ips DROP NOT NULL",
        "ALTER TABLE latency ADD COLUMN image_auroc DOUBLE",
        "ALTER TABLE latency ADD COLUMN auroc_delta DOUBLE",
        "ALTER TABLE latency ADD COLUMN status VARCHAR DEFAULT 'ok'",
        "ALTER TABLE latency ALTER COLUMN status SET NOT NULL",
        "ALTER TABLE latency ADD COLUMN error VARCHAR",
        "ALTER TABLE latency ADD COLUMN timed_runs INTEGER",
        "ALTER TABLE latency ADD COLUMN warmup_runs INTEGER",
        "ALTER TABLE latency ADD COLUMN setup_seconds DOUBLE",
        "ALTER TABLE latency ADD COLUMN calibration_paths VARCHAR[]",
        "ALTER TABLE training_attempts ADD COLUMN validation_low DOUBLE",
        "ALTER TABLE training_attempts ADD COLUMN validation_high DOUBLE",
        "ALTER TABLE training_attempts ADD COLUMN validation_pairs INTEGER",
        """CREATE TABLE recoveries (
               run_id VARCHAR NOT NULL, model VARCHAR NOT NULL, category VARCHAR NOT NULL,
               attempt INTEGER NOT NULL, spike_step INTEGER NOT NULL,
               onset_step INTEGER NOT NULL, restored_step INTEGER NOT NULL,
               skipped_batches INTEGER NOT NULL, extra_steps INTEGER NOT NULL,
               loss_name VARCHAR, value DOUBLE, magnitude DOUBLE, reason VARCHAR,
               learning_rate_before DOUBLE, learning_rate_after DOUBLE)""",
        """CREATE TABLE stages (
               run_id VARCHAR NOT NULL, model VARCHAR NOT NULL, category VARCHAR NOT NULL,
               stage VARCHAR NOT NULL, status VARCHAR NOT NULL, error VARCHAR,
               seconds DOUBLE)""",
    ],
    3: ["ALTER TABLE latency ADD COLUMN hardware VARCHAR"],
}

# Runs are comparable when they read the same data (same root, same manifest hash) with
# the same profile; only completed runs serve as the earlier side.
COMPARE_SQL = """
WITH current_metrics AS (
    SELECT r.run_id, r.data_root, r.dataset_hash, coalesce(r.profile, '') AS profile,
           r.started_at, m.model, m.category, m.metric, m.value
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.run_id = $run_id
),
earlier_metrics AS (
    SELECT r.run_id, r.data_root, r.dataset_hash, coalesce(r.profile, '') AS profile,
           r.started_at, m.model, m.category, m.metric, m.value
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.status = 'completed' AND r.run_id <> $run_id AND r.dataset_hash <> ''
)
SELECT
    c.model, c.category, c.metric,
    c.value,
    p.run_id     AS previous_run_id,
    p.started_at AS previous_started_at,
    p.value      AS previous_value,
    c.value - p.value AS delta,
    coalesce(p.value - c.value > $tolerance, false) AS regression
FROM current_metrics c
ASOF LEFT JOIN earlier_metrics p
    ON  p.data_root = c.data_root AND p.dataset_hash = c.dataset_hash
    AND p.profile = c.profile
    AND p.model = c.model AND p.category = c.category AND p.metric = c.metric
    AND c.started_at > p.started_at
ORDER BY c.model, c.category, c.metric
"""

HISTORY_SQL = """
WITH this_run AS (
    SELECT data_root, dataset_hash, profile, started_at FROM runs WHERE run_id = $run_id
),
recent_runs AS (
    SELECT r.run_id, r.started_at, r.status, r.code_version
    FROM runs r, this_run t
    WHERE r.run_id = $run_id OR (
        r.status = 'completed' AND t.dataset_hash <> ''
        AND r.data_root = t.data_root AND r.dataset_hash = t.dataset_hash
        AND r.profile IS NOT DISTINCT FROM t.profile AND r.started_at <= t.started_at)
    ORDER BY r.started_at DESC
    LIMIT $limit
)
SELECT r.run_id, r.started_at, r.status, r.code_version, w.model, w.category,
       w.image_auroc, w.pixel_auroc, w.image_f1, w.pixel_f1, w.aupro
FROM recent_runs r JOIN metrics_wide w USING (run_id)
ORDER BY r.started_at, w.model, w.category
"""

# What the HTML report shows of one run ($run_id), table by table.
REPORT_SQL = {
    "results": "SELECT * FROM results WHERE run_id = $run_id ORDER BY model, category",
    "metrics": "SELECT * FROM metrics WHERE run_id = $run_id ORDER BY model, category, metric",
    "averages": """
        SELECT model, metric, avg(value) FILTER (WHERE available) AS value,
               count(*) FILTER (WHERE available) AS available, count(*) AS total
        FROM metrics WHERE run_id = $run_id GROUP BY model, metric""",
    "latency": "SELECT * FROM latency WHERE run_id = $run_id ORDER BY model, category, idx",
    "attempts": """
        SELECT * FROM training_attempts WHERE run_id = $run_id
        ORDER BY model, category, attempt""",
    "recoveries": "SELECT * FROM recoveries WHERE run_id = $run_id ORDER BY ALL",
    "stages": "SELECT * FROM stages WHERE run_id = $run_id ORDER BY model, category, stage",
    "losses": """
        SELECT model, category, attempt, loss_name, list(step ORDER BY step) AS steps,
               list(value ORDER BY step) AS values
        FROM losses WHERE run_id = $run_id
        GROUP BY ALL ORDER BY model, category, attempt, loss_name""",
    "roc": """
        SELECT model, category, level, list(fpr ORDER BY idx) AS fpr,
               list(tpr ORDER BY idx) AS tpr
        FROM roc_points WHERE run_id = $run_id
        GROUP BY ALL ORDER BY category, level, model""",
    "validations": """
        SELECT * FROM validations WHERE run_id = $run_id
        ORDER BY passed, tool, category, rule""",
    "artifacts": """
        SELECT * FROM artifacts WHERE run_id = $run_id ORDER BY model, category, kind""",
    "score_counts": """
        SELECT model, category, count(*) AS images, sum(label) AS anomalous
        FROM scores WHERE run_id = $run_id GROUP BY ALL""",
}

DEFAULT_LOCK_TIMEOUT_S = 30.0
T = TypeVar("T")
Operation = Callable[[duckdb.DuckDBPyConnection], T]


class StoreBusy(RuntimeError):
    """Another process held the DuckDB file for longer than the store waits for it."""


class SchemaError(RuntimeError):
    """The file is not a results store this code can use (newer schema, failed migration)."""


class ResultStore:
    """A DuckDB file holding every benchmark run; see the README for the tables.

    Opening it creates the file, or brings an older file's schema up to date, or refuses
    a file it cannot use (`SchemaError`), so a bad store is found before any training.
    `lock_timeout_s`: how long every call waits for a file another process holds."""

    def __init__(self, db_path: str | Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.db_path = Path(db_path)
        self.lock_timeout_s = float(lock_timeout_s)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._ensure_schema()

    # ---- connections -------------------------------------------------------------------

    def _run(self, operation: Operation[T], *, read_only: bool = False) -> T:
        """Run `operation` on a fresh connection, waiting out other processes' locks (and
        rerunning it after a conflict with a concurrent transaction) with exponential
        backoff for at most `lock_timeout_s`."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only)
                try:
                    return operation(con)
                finally:
                    con.close()
            except (
                duckdb.IOException,
                duckdb.ConnectionException,
                duckdb.TransactionException,
            ) as err:
                if not _is_conflict(err):
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreBusy(_busy_message(self.db_path, err, self.lock_timeout_s)) from err
                log.info("results store %s is busy, retrying: %s", self.db_path, err)
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)

    def _write(self, operation: Operation[T]) -> T:
        """`operation` in one transaction: all of its statements or none of them."""

        def in_transaction(con: duckdb.DuckDBPyConnection) -> T:
            con.execute("BEGIN TRANSACTION")
            try:
                result = operation(con)
            except BaseException:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return result

        return self._run(in_transaction)

    def _read(self, operation: Operation[T]) -> T:
        return self._run(operation, read_only=True)

    # ---- schema ------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The file's schema version: 0 for an empty file, 1 for a file from before
        versions were recorded."""
        if not self.db_path.exists():
            return 0
        return self._read(lambda con: _schema_version(con, self.db_path))

    def _ensure_schema(self) -> None:
        version = self.schema_version()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"results store {self.db_path} has schema version {version}, newer than "
                f"this code's {SCHEMA_VERSION}: use a newer release or another --db file"
            )

        def create_or_migrate(con: duckdb.DuckDBPyConnection) -> int:
            found = _schema_version(con, self.db_path)  # again, inside the transaction
            if found == 0:
                con.execute(SCHEMA)
                steps = [SCHEMA_VERSION]
            else:
                steps = list(range(found + 1, SCHEMA_VERSION + 1))
                for step in steps:
                    for sql in MIGRATIONS[step]:
                        con.execute(sql)
            con.execute(VIEWS)
            code_version = detect_code_version()
            for step in steps:
                con.execute(
                    "INSERT INTO schema_version (version, applied_at, code_version) "
                    "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    [step, _utcnow(), code_version],
                )
            return found

        try:
            found = self._write(create_or_migrate)
        except duckdb.Error as err:
            raise SchemaError(
                f"results store {self.db_path} (schema version {version}) could not be "
                f"migrated to version {SCHEMA_VERSION}, nothing was changed: {err}"
            ) from err
        if found:
            log.warning(
                "migrated results store %s from schema version %d to %d",
                self.db_path,
                found,
                SCHEMA_VERSION,
            )

    # ---- writing -----------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        flow_run_id: str | None,
        dataset: str,
        data_root: str,
        categories: list[str],
        models: list[str],
        profile: str | None,
        dataset_hash: str = "",
        environment: dict | None = None,
        code_version: str | None = None,
        started_at: datetime | None = None,
    ) -> None:
        """Record a run as `running`. Starting the same run_id again updates its row
        (status back to running, ended_at and error cleared) and keeps the first start
        time."""
        environment = environment if environment is not None else collect_environment()
        params = [
            run_id,
            flow_run_id,
            started_at or _utcnow(),
            dataset,
            str(data_root),
            list(categories),
            list(models),
            profile,
            code_version or detect_code_version(),
            dataset_hash,
            json.dumps(environment, default=str),
        ]
        self._write(
            lambda con: con.execute(
                """
                INSERT INTO runs (run_id, flow_run_id, started_at, ended_at, dataset,
                    data_root, categories, models, profile, status, code_version,
                    dataset_hash, environment, error)
                VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, 'running', ?, ?, ?, NULL)
                ON CONFLICT (run_id) DO UPDATE SET
                    flow_run_id = excluded.flow_run_id, ended_at = NULL,
                    dataset = excluded.dataset, data_root = excluded.data_root,
                    categories = excluded.categories, models = excluded.models,
                    profile = excluded.profile, status = 'running',
                    code_version = excluded.code_version,
                    dataset_hash = excluded.dataset_hash,
                    environment = excluded.environment, error = NULL
                """,
                params,
            )
        )

    def write_validations(
        self, run_id: str, report: ValidationReport, data_root: str | Path | None = None
    ) -> None:
        """Replace the run's validation rows with the report's rules (one transaction).
        `data_root`: where the validated data was found (recorded on the run, with the
        report's dataset hash: together they say which data the run read)."""
        checked_at = _utcnow()
        rows = [
            (
                run_id,
                report.dataset,
                r.category,
                r.tool,
                r.rule,
                bool(r.passed),
                int(r.failing_count),
                [str(e) for e in r.examples],
                r.message,
                checked_at,
            )
            for r in report.rules
        ]
        root = str(data_root) if data_root is not None else None

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM validations WHERE run_id = ?", [run_id])
            if rows:
                con.executemany(
                    """INSERT INTO validations (run_id, dataset, category, tool, rule,
                           passed, failing_count, examples, message, checked_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    rows,
                )
            con.execute(
                """UPDATE runs SET dataset_notes = ?,
                       dataset_hash = CASE WHEN ? <> '' THEN ? ELSE dataset_hash END,
                       data_root = coalesce(?, data_root)
                   WHERE run_id = ?""",
                [list(report.notes), report.dataset_hash, report.dataset_hash, root, run_id],
            )

        self._write(write)

    def write_result(self, run_id: str, result: ModelResult) -> None:
        """Replace everything stored for (run, model, category) in one transaction."""
        self._write(lambda con: _replace_result(con, run_id, result))
        log.info("stored %s/%s for run %s", result.model, result.category, run_id)

    def write_artifact(self, run_id: str, model: str, category: str, kind: str, path) -> None:
        """Add one artifact, replacing an earlier one of the same kind."""

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "DELETE FROM artifacts WHERE run_id=? AND model=? AND category=? AND kind=?",
                [run_id, model, category, kind],
            )
            con.execute(
                "INSERT INTO artifacts (run_id, model, category, kind, path) "
                "VALUES (?, ?, ?, ?, ?)",
                [run_id, model, category, kind, str(path)],
            )

        self._write(write)

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        """Record how the run ended (`completed`, `incomplete`, `failed`, ...) and why."""

        def write(con: duckdb.DuckDBPyConnection) -> list:
            return con.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ? "
                "RETURNING run_id",
                [status, _utcnow(), error, run_id],
            ).fetchall()

        if not self._write(write):
            raise KeyError(f"run {run_id!r} was never started in {self.db_path}")

    def close_if_running(self, run_id: str, status: str, error: str | None = None) -> bool:
        """Label a run that is still `running` as ended (`crashed`, `failed`, ...); its
        stored cells stay, each was written whole. A run that already recorded its end
        keeps it. Returns whether the run was closed."""

        def write(con: duckdb.DuckDBPyConnection) -> list:
            return con.execute(
                """UPDATE runs SET status = ?, ended_at = ?, error = coalesce(error, ?)
                   WHERE run_id = ? AND status = 'running' RETURNING run_id""",
                [status, _utcnow(), error, run_id],
            ).fetchall()

        return bool(self._write(write))

    # ---- reading -----------------------------------------------------------------------

    def running_runs(self, except_run_id: str | None = None) -> list[tuple[str, str | None]]:
        """(run_id, flow_run_id) of every run still marked `running`."""
        return self._read(
            lambda con: con.execute(
                "SELECT run_id, flow_run_id FROM runs WHERE status = 'running' "
                "AND run_id IS DISTINCT FROM ? ORDER BY started_at",
                [except_run_id],
            ).fetchall()
        )

    def compare_with_previous(self, run_id: str, tolerance: float = 0.02) -> pd.DataFrame:
        """Each (model, category, metric) of the run beside the latest earlier completed
        run of the same data (root and dataset hash) and profile that has it;
        `regression` when the value dropped by more than `tolerance` (all stored metrics
        are higher-is-better)."""
        return self._read(
            lambda con: con.execute(COMPARE_SQL, {"run_id": run_id, "tolerance": tolerance}).df()
        )

    def history(self, run_id: str, limit: int = 20) -> pd.DataFrame:
        """One row per (run, model, category) of the last `limit` completed runs of the
        same data and profile up to this run (which is always included), oldest first,
        with the headline metrics (for trend charts)."""
        return self._read(
            lambda con: con.execute(HISTORY_SQL, {"run_id": run_id, "limit": limit}).df()
        )

    def report_data(self, run_id: str, tolerance: float = 0.02) -> dict[str, Any]:
        """Everything the HTML report shows of one run, read in one connection: `run`
        (a dict), a list of row dicts per REPORT_SQL entry, and the `comparison` and
        `history` DataFrames."""

        def read(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
            runs = _rows(con, "SELECT * FROM runs WHERE run_id = $run_id", run_id)
            if not runs:
                raise KeyError(f"run {run_id!r} is not in {self.db_path}")
            data: dict[str, Any] = {"run": runs[0]}
            for name, sql in REPORT_SQL.items():
                data[name] = _rows(con, sql, run_id)
            data["comparison"] = con.execute(
                COMPARE_SQL, {"run_id": run_id, "tolerance": tolerance}
            ).df()
            data["history"] = con.execute(HISTORY_SQL, {"run_id": run_id, "limit": 20}).df()
            return data

        return self._read(read)

    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> pd.DataFrame:
        """Read-only SQL against the store (for tests and notebooks)."""
        return self._read(lambda con: con.execute(sql, params).df())


# ---- connections and schema --------------------------------------------------------------


def _is_conflict(err: duckdb.Error) -> bool:
    """Another process holds the file's lock, this process has it open differently, or
    a concurrent transaction touched the same rows (rolled back: safe to run again)."""
    if isinstance(err, duckdb.TransactionException):
        return "conflict" in str(err).lower()
    return "Could not set lock" in str(err) or "different configuration" in str(err)


def _busy_message(db_path: Path, err: duckdb.Error, timeout_s: float) -> str:
    holder = re.search(r"lock is held in (.+?) \(PID (\d+)\)", str(err))
    who = f"{holder.group(1)} (PID {holder.group(2)})" if holder else "another connection"
    return (
        f"results store {db_path} is busy: {who} held it for more than {timeout_s:g} s. "
        "Close that program (a DuckDB CLI, a notebook, another benchmark run) or wait "
        "longer (db_lock_timeout_s)"
    )


def _schema_version(con: duckdb.DuckDBPyConnection, db_path: Path) -> int:
    tables = {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'main' AND table_catalog = current_database()"
        ).fetchall()
    }
    if "schema_version" in tables:
        return int(con.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)
    if "runs" in tables:
        return 1
    if not tables:
        return 0
    raise SchemaError(
        f"{db_path} holds tables {sorted(tables)} but no `runs` table: not a results "
        "store; pass another --db file"
    )


def _rows(con: duckdb.DuckDBPyConnection, sql: str, run_id: str) -> list[dict]:
    cursor = con.execute(sql, {"run_id": run_id})
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# ---- row builders ------------------------------------------------------------------------


def _replace_result(con: duckdb.DuckDBPyConnection, run_id: str, result: ModelResult) -> None:
    key = (run_id, result.model, result.category)
    for table in RESULT_TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ? AND model = ? AND category = ?", key)
    _insert_result_row(con, key, result)
    _insert_attempts(con, key, result)
    _insert_metrics(con, key, result)
    _insert_columns(
        con,
        "roc_points",
        key,
        {
            "level": ("VARCHAR", [p[0] for p in result.roc_points]),
            "idx": ("INTEGER", list(range(len(result.roc_points)))),
            "fpr": ("DOUBLE", [float(p[1]) for p in result.roc_points]),
            "tpr": ("DOUBLE", [float(p[2]) for p in result.roc_points]),
        },
    )
    _insert_columns(
        con,
        "scores",
        key,
        {
            "path": ("VARCHAR", [str(s["path"]) for s in result.scores]),
            "label": ("INTEGER", [_label(s.get("label")) for s in result.scores]),
            "defect_type": ("VARCHAR", [s.get("defect_type") for s in result.scores]),
            "score": ("DOUBLE", [_float(s.get("score")) for s in result.scores]),
        },
    )
    lat = result.latency
    _insert_columns(
        con,
        "latency",
        key,
        {
            "idx": ("INTEGER", list(range(len(lat)))),
            "path": ("VARCHAR", [x.path for x in lat]),
            "batch_size": ("INTEGER", [x.batch_size for x in lat]),
            "device": ("VARCHAR", [x.device for x in lat]),
            "threads": ("INTEGER", [x.threads for x in lat]),
            "precision": ("VARCHAR", [x.precision for x in lat]),
            "p50_ms": ("DOUBLE", [x.p50_ms for x in lat]),
            "p95_ms": ("DOUBLE", [x.p95_ms for x in lat]),
            "throughput_ips": ("DOUBLE", [x.throughput_ips for x in lat]),
            "peak_memory_mb": ("DOUBLE", [x.peak_memory_mb for x in lat]),
            "image_auroc": ("DOUBLE", [_float(x.image_auroc) for x in lat]),
            "auroc_delta": ("DOUBLE", [_float(x.auroc_delta) for x in lat]),
            "status": ("VARCHAR", [x.status for x in lat]),
            "error": ("VARCHAR", [x.error for x in lat]),
            "timed_runs": ("INTEGER", [x.timed_runs for x in lat]),
            "warmup_runs": ("INTEGER", [x.warmup_runs for x in lat]),
            "setup_seconds": ("DOUBLE", [x.setup_seconds for x in lat]),
            "calibration_paths": ("VARCHAR[]", [list(x.calibration_paths) for x in lat]),
            "hardware": ("VARCHAR", [x.hardware for x in lat]),
        },
    )
    _insert_columns(
        con,
        "artifacts",
        key,
        {
            "kind": ("VARCHAR", list(result.artifacts)),
            "path": ("VARCHAR", [str(p) for p in result.artifacts.values()]),
        },
    )


def _insert_columns(
    con: duckdb.DuckDBPyConnection,
    table: str,
    key: tuple[str, str, str],
    columns: dict[str, tuple[str, list]],
) -> None:
    """Bulk insert column lists in one statement. Lists are unnested inside DuckDB,
    which keeps NaN as NaN (a pandas scan would turn it into NULL) and stays fast for
    hundreds of thousands of loss steps."""
    if not columns or not next(iter(columns.values()))[1]:
        return
    names = ", ".join(columns)
    unnests = ", ".join(f"unnest(?::{sql_type}[])" for sql_type, _ in columns.values())
    con.execute(
        f"INSERT INTO {table} (run_id, model, category, {names}) SELECT ?, ?, ?, {unnests}",
        [*key, *(values for _, values in columns.values())],
    )


def _insert_result_row(con, key: tuple[str, str, str], result: ModelResult) -> None:
    source = str(result.weights.get("source", "unknown"))
    # A fallback backbone is never the paper's configuration, whatever else is claimed.
    paper = source == "pretrained" and bool(
        result.weights.get("paper_configuration", result.profile == "paper")
    )
    available = any(_float(v) is not None for v in result.metrics.values())
    con.execute(
        """INSERT INTO results (run_id, model, category, profile, settings, weights,
               weights_source, paper_configuration, device, train_seconds, status, notes,
               written_at, cached_from, worker)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            *key,
            result.profile,
            json.dumps(result.settings, default=str, sort_keys=True),
            json.dumps(result.weights, default=str, sort_keys=True),
            source,
            paper,
            result.device,
            float(result.train_seconds),
            "completed" if available else "no_metrics",
            list(result.notes),
            _utcnow(),
            result.cached_from,
            result.worker or None,
        ],
    )


def _insert_attempts(con, key: tuple[str, str, str], result: ModelResult) -> None:
    attempts = result.attempts
    _insert_columns(
        con,
        "training_attempts",
        key,
        {
            "attempt": ("INTEGER", [a.attempt for a in attempts]),
            "seed": ("BIGINT", [a.seed for a in attempts]),
            "learning_rate": ("DOUBLE", [a.learning_rate for a in attempts]),
            "steps": ("INTEGER", [a.steps for a in attempts]),
            "spike_step": ("INTEGER", [a.spike_step for a in attempts]),
            "spike_loss_name": ("VARCHAR", [a.spike_loss_name for a in attempts]),
            "spike_value": ("DOUBLE", [a.spike_value for a in attempts]),
            "spike_magnitude": ("DOUBLE", [a.spike_magnitude for a in attempts]),
            "end_reason": ("VARCHAR", [a.end_reason for a in attempts]),
            "retry_reason": ("VARCHAR", [a.retry_reason for a in attempts]),
            "validation_metric": ("DOUBLE", [a.validation_metric for a in attempts]),
            "chosen": ("BOOLEAN", [bool(a.chosen) for a in attempts]),
            "validation_low": ("DOUBLE", [a.validation_low for a in attempts]),
            "validation_high": ("DOUBLE", [a.validation_high for a in attempts]),
            "validation_pairs": ("INTEGER", [a.validation_pairs for a in attempts]),
        },
    )
    recoveries = [r for a in attempts for r in a.recoveries]
    _insert_columns(
        con,
        "recoveries",
        key,
        {
            name: (sql_type, [getattr(r, name) for r in recoveries])
            for name, sql_type in (
                ("attempt", "INTEGER"),
                ("spike_step", "INTEGER"),
                ("onset_step", "INTEGER"),
                ("restored_step", "INTEGER"),
                ("skipped_batches", "INTEGER"),
                ("extra_steps", "INTEGER"),
                ("loss_name", "VARCHAR"),
                ("value", "DOUBLE"),
                ("magnitude", "DOUBLE"),
                ("reason", "VARCHAR"),
                ("learning_rate_before", "DOUBLE"),
                ("learning_rate_after", "DOUBLE"),
            )
        },
    )
    _insert_columns(
        con,
        "stages",
        key,
        {
            "stage": ("VARCHAR", [s.stage for s in result.stages]),
            "status": ("VARCHAR", [s.status for s in result.stages]),
            "error": ("VARCHAR", [s.error for s in result.stages]),
            "seconds": ("DOUBLE", [s.seconds for s in result.stages]),
        },
    )
    losses = [(a.attempt, step, name, value) for a in attempts for step, name, value in a.losses]
    _insert_columns(
        con,
        "losses",
        key,
        {
            "attempt": ("INTEGER", [x[0] for x in losses]),
            "step": ("INTEGER", [x[1] for x in losses]),
            "loss_name": ("VARCHAR", [x[2] for x in losses]),
            "value": ("DOUBLE", [float(x[3]) for x in losses]),
        },
    )


def metric_rows(result: ModelResult) -> list[tuple[str, float | None, bool, str | None]]:
    """(metric, value, available, note) for every metric, the core ones always present.

    A string value `<metric>_method` (e.g. image_f1_method) becomes the note of
    `<metric>`; a missing or None value is stored as NULL with available=False and a
    note saying why: "no masks" for pixel metrics when settings["masks"] is False, else
    the first of the result's notes that names the metric."""
    values = dict(result.metrics)
    methods = {
        name.removesuffix("_method"): str(values.pop(name))
        for name in list(values)
        if name.endswith("_method") and isinstance(values[name], str)
    }
    rows = []
    for metric in dict.fromkeys([*CORE_METRICS, *values]):
        raw = values.get(metric)
        value = _float(raw)
        if value is not None:
            note = f"method: {methods[metric]}" if metric in methods else None
            rows.append((metric, value, True, note))
            continue
        reason = next((n for n in result.notes if metric in n), None)
        if result.settings.get("masks") is False and metric.startswith(("pixel_", "aupro")):
            reason = "no masks"
        if isinstance(raw, str):
            reason = raw
        note = f"not available: {reason}" if reason else "not available"
        rows.append((metric, None, False, note))
    return rows


def _insert_metrics(con, key: tuple[str, str, str], result: ModelResult) -> None:
    rows = metric_rows(result)
    _insert_columns(
        con,
        "metrics",
        key,
        {
            "metric": ("VARCHAR", [r[0] for r in rows]),
            "value": ("DOUBLE", [r[1] for r in rows]),
            "available": ("BOOLEAN", [r[2] for r in rows]),
            "note": ("VARCHAR", [r[3] for r in rows]),
        },
    )


def _float(value: Any) -> float | None:
    """A finite float, or None for None / strings / NaN (a NaN metric is not a value)."""
    if value is None or isinstance(value, str | bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return 0 if value.lower() in ("good", "normal", "0") else 1
    return int(value)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# ---- provenance --------------------------------------------------------------------------


def detect_code_version() -> str:
    """`git describe --always --dirty` of this checkout, else the package version."""
    repo = REPO_ROOT
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return "anomaly-benchmark " + metadata.version("anomaly-benchmark")
    except metadata.PackageNotFoundError:
        return "unknown"


def collect_environment() -> dict[str, Any]:
    """Versions and host facts for the report. Reads package metadata only: importing
    torch here would cost seconds, so torch threads are read only if already loaded."""
    packages = ["torch", "torchvision", "anomalib", "lightning", "timm", "prefect", "duckdb"]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = bool(torch.cuda.is_available())
    return env
