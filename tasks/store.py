"""The DuckDB results store: every run, validation, training attempt, metric and artifact.

The flow is the only writer; tasks return values (`ValidationReport`, `ModelResult`)
and the flow hands them here. History is kept across runs, so a run can be compared
with the previous comparable one (same dataset and profile) and the report can draw a
trend. The schema is documented in the README.

Connections are opened per call and closed at once, so other processes (the report,
a notebook) can read the file between writes. `write_result` replaces one
(run, model, category) in a single transaction: a crash leaves the old rows or the new
ones, never a mix.

Example:
    >>> store = ResultStore(tmp_path / "results.duckdb")
    >>> store.start_run("r1", flow_run_id=None, dataset="demo", data_root="data/demo",
    ...                 categories=["demo_grid"], models=["patchcore"], profile="quick")
    >>> store.write_result("r1", model_result)
    >>> store.finish_run("r1", "completed")
    >>> store.compare_with_previous("r1")  # DataFrame: value, previous_value, delta, regression
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from tasks.results import ModelResult, ValidationReport

log = logging.getLogger(__name__)

# Metrics every result has a row for, so the wide view and the report never miss one.
CORE_METRICS = ("image_auroc", "pixel_auroc", "image_f1", "pixel_f1", "aupro")

# Tables keyed by (run_id, model, category): write_result replaces all of them at once.
RESULT_TABLES = (
    "results",
    "training_attempts",
    "losses",
    "metrics",
    "roc_points",
    "scores",
    "latency",
    "artifacts",
)

SCHEMA = """
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
    environment   JSON
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
    written_at          TIMESTAMP NOT NULL
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
    chosen            BOOLEAN NOT NULL
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
    calibration_paths VARCHAR[]      -- int8 calibration images (training images only)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    kind     VARCHAR NOT NULL,      -- e.g. overlay_best_0, overlay_worst_0, checkpoint
    path     VARCHAR NOT NULL
);
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

COMPARE_SQL = """
WITH current_metrics AS (
    SELECT r.run_id, r.dataset, coalesce(r.profile, '') AS profile, r.started_at,
           m.model, m.category, m.metric, m.value
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.run_id = $run_id
),
earlier_metrics AS (
    SELECT r.run_id, r.dataset, coalesce(r.profile, '') AS profile, r.started_at,
           m.model, m.category, m.metric, m.value
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.status = 'completed' AND r.run_id <> $run_id
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
    ON  p.dataset = c.dataset AND p.profile = c.profile
    AND p.model = c.model AND p.category = c.category AND p.metric = c.metric
    AND c.started_at > p.started_at
ORDER BY c.model, c.category, c.metric
"""

HISTORY_SQL = """
WITH recent_runs AS (
    SELECT run_id, started_at, status, code_version
    FROM runs
    WHERE dataset = $dataset AND profile IS NOT DISTINCT FROM $profile
    ORDER BY started_at DESC
    LIMIT $limit
)
SELECT r.run_id, r.started_at, r.status, r.code_version, w.model, w.category,
       w.image_auroc, w.pixel_auroc, w.image_f1, w.pixel_f1, w.aupro
FROM recent_runs r JOIN metrics_wide w USING (run_id)
ORDER BY r.started_at, w.model, w.category
"""


class ResultStore:
    """A DuckDB file holding every benchmark run; see the README for the tables."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute(SCHEMA)

    @contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        con = duckdb.connect(str(self.db_path), read_only=read_only)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

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
        (status back to running, ended_at cleared) and keeps the first start time."""
        environment = environment if environment is not None else collect_environment()
        with self._connect() as con:
            con.execute(
                """
                INSERT INTO runs (run_id, flow_run_id, started_at, ended_at, dataset,
                    data_root, categories, models, profile, status, code_version,
                    dataset_hash, environment)
                VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, 'running', ?, ?, ?)
                ON CONFLICT (run_id) DO UPDATE SET
                    flow_run_id = excluded.flow_run_id, ended_at = NULL,
                    dataset = excluded.dataset, data_root = excluded.data_root,
                    categories = excluded.categories, models = excluded.models,
                    profile = excluded.profile, status = 'running',
                    code_version = excluded.code_version,
                    dataset_hash = excluded.dataset_hash,
                    environment = excluded.environment
                """,
                [
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
                ],
            )

    def write_validations(self, run_id: str, report: ValidationReport) -> None:
        """Replace the run's validation rows with the report's rules (one transaction)."""
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
        with self._transaction() as con:
            con.execute("DELETE FROM validations WHERE run_id = ?", [run_id])
            if rows:
                con.executemany("INSERT INTO validations VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            con.execute(
                """UPDATE runs SET dataset_notes = ?,
                       dataset_hash = CASE WHEN ? <> '' THEN ? ELSE dataset_hash END
                   WHERE run_id = ?""",
                [list(report.notes), report.dataset_hash, report.dataset_hash, run_id],
            )

    def write_result(self, run_id: str, result: ModelResult) -> None:
        """Replace everything stored for (run, model, category) in one transaction."""
        key = (run_id, result.model, result.category)
        with self._transaction() as con:
            for table in RESULT_TABLES:
                con.execute(
                    f"DELETE FROM {table} WHERE run_id = ? AND model = ? AND category = ?", key
                )
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
                    "calibration_paths": (
                        "VARCHAR[]",
                        [list(x.calibration_paths) for x in lat],
                    ),
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
        log.info("stored %s/%s for run %s", result.model, result.category, run_id)

    def write_artifact(self, run_id: str, model: str, category: str, kind: str, path) -> None:
        """Add one artifact, replacing an earlier one of the same kind."""
        with self._transaction() as con:
            con.execute(
                "DELETE FROM artifacts WHERE run_id=? AND model=? AND category=? AND kind=?",
                [run_id, model, category, kind],
            )
            con.execute(
                "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?)",
                [run_id, model, category, kind, str(path)],
            )

    def discard_partial_run(self, run_id: str) -> None:
        """A run that died midway: mark it `crashed` and delete its per-model rows in one
        transaction (its validations stay: the data was checked), so nothing partial is
        left to be read as a result."""
        with self._transaction() as con:
            for table in RESULT_TABLES:
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            con.execute(
                "UPDATE runs SET status = 'crashed', ended_at = ? WHERE run_id = ?",
                [_utcnow(), run_id],
            )

    def finish_run(self, run_id: str, status: str) -> None:
        with self._connect() as con:
            updated = con.execute(
                "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ? RETURNING run_id",
                [status, _utcnow(), run_id],
            ).fetchall()
        if not updated:
            raise KeyError(f"run {run_id!r} was never started in {self.db_path}")

    # ---- reading -----------------------------------------------------------------------

    def compare_with_previous(self, run_id: str, tolerance: float = 0.02) -> pd.DataFrame:
        """Each (model, category, metric) of the run beside the latest earlier completed
        run of the same dataset and profile that has it; `regression` when the value
        dropped by more than `tolerance` (all stored metrics are higher-is-better)."""
        with self._connect(read_only=True) as con:
            return con.execute(COMPARE_SQL, {"run_id": run_id, "tolerance": tolerance}).df()

    def history(self, dataset: str, profile: str | None, limit: int = 20) -> pd.DataFrame:
        """One row per (run, model, category) of the last `limit` runs of this dataset
        and profile, oldest first, with the headline metrics (for trend charts)."""
        with self._connect(read_only=True) as con:
            return con.execute(
                HISTORY_SQL, {"dataset": dataset, "profile": profile, "limit": limit}
            ).df()

    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> pd.DataFrame:
        """Read-only SQL against the store (for the report, tests and notebooks)."""
        with self._connect(read_only=True) as con:
            return con.execute(sql, params).df()


# ---- row builders ------------------------------------------------------------------------


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
        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    repo = Path(__file__).resolve().parents[1]
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
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = bool(torch.cuda.is_available())
    return env
