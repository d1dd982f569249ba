"""The results store's tables, declared once: the DDL and the writer both follow from here.

Each `Table` lists its columns in order, with their DuckDB type, constraint and, for
the tables written per result, how the writer reads each value from a row object
(by default the attribute of the column's name). So a new field of, say,
`LatencyResult` is one `Column` here (the DDL of a new file and the writer's column
lists follow) plus its step in `tasks.results.store.migrations`, which brings existing
files to the same columns; `tests/test_store.py` checks that a migrated version-1 file
ends up with exactly the columns a new file gets.

Example:
    >>> print(LATENCY.ddl())  # doctest: +ELLIPSIS
    CREATE TABLE IF NOT EXISTS latency (
        run_id VARCHAR NOT NULL,
    ...
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from tasks.results.store.rows import (
    as_float,
    as_label,
    metric_rows,
    paper_configuration,
    result_status,
    utcnow,
    weights_source,
)
from tasks.results.types import ModelResult

POSITION = "position"  # a column whose value is the row's position in its list


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type
    constraint: str = ""  # e.g. "NOT NULL", "PRIMARY KEY", "NOT NULL DEFAULT 'ok'"
    comment: str = ""
    value: Callable[[Any], Any] | str | None = None  # row -> value; None: the attribute

    def read(self, row: Any, position: int) -> Any:
        if self.value == POSITION:
            return position
        return (self.value or attrgetter(self.name))(row)


@dataclass(frozen=True)
class Table:
    """A table; `rows` (for tables keyed by run, model and category) gives the row
    objects of one `ModelResult`, whose rows `write_result` replaces at once."""

    name: str
    columns: tuple[Column, ...]
    rows: Callable[[ModelResult], list] | None = None

    @property
    def value_columns(self) -> tuple[Column, ...]:
        """The columns after the (run_id, model, category) key."""
        return self.columns[len(KEY) :] if self.rows is not None else self.columns

    def ddl(self) -> str:
        lines = []
        for i, c in enumerate(self.columns):
            sep = "," if i < len(self.columns) - 1 else ""
            text = f"    {c.name} {c.type}{' ' + c.constraint if c.constraint else ''}{sep}"
            lines.append(f"{text}  -- {c.comment}" if c.comment else text)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n" + "\n".join(lines) + "\n);"


KEY = (
    Column("run_id", "VARCHAR", "NOT NULL"),
    Column("model", "VARCHAR", "NOT NULL"),
    Column("category", "VARCHAR", "NOT NULL"),
)

SCHEMA_VERSION_TABLE = Table(
    "schema_version",
    (
        Column("version", "INTEGER", "PRIMARY KEY"),
        Column("applied_at", "TIMESTAMP", "NOT NULL", "UTC"),
        Column("code_version", "VARCHAR", "NOT NULL"),
    ),
)
# The run's process and lease (ResultStore.start_run, renew_lease): a run whose process is
# gone, or whose lease ran out, is recognised as dead (tasks.results.runs.reconcile_runs).
LEASE = (
    Column("host", "VARCHAR", "", "host of the process running it"),
    Column("boot_id", "VARCHAR", "", "that host's boot: a pid means nothing after it"),
    Column("pid", "INTEGER"),
    Column("pid_started", "BIGINT", "", "the process's start, clock ticks after boot"),
    Column("pid_namespace", "VARCHAR", "", "its pid namespace: another's pids are others"),
    Column("heartbeat_at", "TIMESTAMP", "", "UTC, renewed while the run lives (lease)"),
)
# written by ResultStore.start_run/finish_run (an upsert that keeps the first start)
RUNS = Table(
    "runs",
    (
        Column("run_id", "VARCHAR", "PRIMARY KEY"),
        Column("flow_run_id", "VARCHAR"),
        Column("started_at", "TIMESTAMP", "NOT NULL", "UTC"),
        Column("ended_at", "TIMESTAMP", "", "UTC, NULL while running"),
        Column("dataset", "VARCHAR", "NOT NULL"),
        Column("data_root", "VARCHAR", "NOT NULL"),
        Column("categories", "VARCHAR[]", "NOT NULL"),
        Column("models", "VARCHAR[]", "NOT NULL"),
        Column("profile", "VARCHAR"),
        Column("status", "VARCHAR", "NOT NULL", "running | completed | failed | ..."),
        Column("code_version", "VARCHAR", "NOT NULL"),
        Column("dataset_hash", "VARCHAR", "NOT NULL DEFAULT ''"),
        Column("dataset_notes", "VARCHAR[]", "NOT NULL DEFAULT []"),
        Column("environment", "JSON"),
        Column("error", "VARCHAR", "", "why the run did not complete, NULL if it did"),
        *LEASE,
    ),
)
# One row per (run, model, category) the run plans: how far each got, and why it stopped.
# A cell's results are stored whole when it completes (write_result); this table also
# says which cells failed, were cancelled with their run, or died with it.
CELLS = Table(
    "cells",
    (
        *KEY,
        Column("status", "VARCHAR", "NOT NULL",
               "pending | running | completed | cached | failed | cancelled | crashed"),
        Column("error", "VARCHAR", "", "why it did not complete"),
        Column("started_at", "TIMESTAMP", "", "UTC; NULL when it never started here"),
        Column("ended_at", "TIMESTAMP", "", "UTC"),
    ),
)  # fmt: skip
# one row per rule of a ValidationReport (ResultStore.write_validations)
VALIDATIONS = Table(
    "validations",
    (
        Column("run_id", "VARCHAR", "NOT NULL"),
        Column("dataset", "VARCHAR", "NOT NULL"),
        Column("category", "VARCHAR", "NOT NULL", "'*' for dataset-wide rules"),
        Column("tool", "VARCHAR", "NOT NULL", "pandera | great_expectations | layout"),
        Column("rule", "VARCHAR", "NOT NULL"),
        Column("passed", "BOOLEAN", "NOT NULL", value=lambda r: bool(r.passed)),
        Column("failing_count", "INTEGER", "NOT NULL", value=lambda r: int(r.failing_count)),
        Column("examples", "VARCHAR[]", "NOT NULL", value=lambda r: [str(e) for e in r.examples]),
        Column("message", "VARCHAR", "NOT NULL"),
        Column("checked_at", "TIMESTAMP", "NOT NULL"),
    ),
)

# ---- the tables of one result, keyed by (run_id, model, category) -------------------------


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


RESULTS = Table(
    "results",
    (
        *KEY,
        Column("profile", "VARCHAR"),
        Column("settings", "JSON", "NOT NULL", value=lambda r: _json(r.settings)),
        Column("weights", "JSON", "NOT NULL", value=lambda r: _json(r.weights)),
        Column("weights_source", "VARCHAR", "NOT NULL", "pretrained | fallback | unknown",
               value=weights_source),
        Column("paper_configuration", "BOOLEAN", "NOT NULL", value=paper_configuration),
        Column("device", "VARCHAR"),
        Column("train_seconds", "DOUBLE", value=lambda r: float(r.train_seconds)),
        Column("status", "VARCHAR", "NOT NULL", "completed | no_metrics", value=result_status),
        Column("notes", "VARCHAR[]", "NOT NULL DEFAULT []", value=lambda r: list(r.notes)),
        Column("written_at", "TIMESTAMP", "NOT NULL", value=lambda r: utcnow()),
        Column("cached_from", "VARCHAR", "", "run that trained it, when served from cache"),
        Column("worker", "VARCHAR", "", "Dask worker name@address, or host:pid in-process",
               value=lambda r: r.worker or None),
    ),
    rows=lambda result: [result],
)  # fmt: skip
TRAINING_ATTEMPTS = Table(
    "training_attempts",
    (
        *KEY,
        Column("attempt", "INTEGER", "NOT NULL"),
        Column("seed", "BIGINT"),
        Column("learning_rate", "DOUBLE"),
        Column("steps", "INTEGER"),
        Column("spike_step", "INTEGER"),
        Column("spike_loss_name", "VARCHAR"),
        Column("spike_value", "DOUBLE"),
        Column("spike_magnitude", "DOUBLE"),
        Column("end_reason", "VARCHAR", "NOT NULL"),
        Column("retry_reason", "VARCHAR"),
        Column("validation_metric", "DOUBLE"),
        Column("chosen", "BOOLEAN", "NOT NULL", value=lambda a: bool(a.chosen)),
        Column("validation_low", "DOUBLE", "", "Hanley-McNeil 95 % interval of validation_metric"),
        Column("validation_high", "DOUBLE"),
        Column("validation_pairs", "INTEGER", "", "normal x anomalous validation pairs"),
    ),
    rows=lambda result: list(result.attempts),
)
RECOVERIES = Table(
    "recoveries",
    (
        *KEY,
        Column("attempt", "INTEGER", "NOT NULL"),
        Column("spike_step", "INTEGER", "NOT NULL", "step that confirmed the spike"),
        Column("onset_step", "INTEGER", "NOT NULL", "its first flagged step"),
        Column("restored_step", "INTEGER", "NOT NULL", "checkpoint rolled back to"),
        Column("skipped_batches", "INTEGER", "NOT NULL"),
        Column("extra_steps", "INTEGER", "NOT NULL"),
        Column("loss_name", "VARCHAR"),
        Column("value", "DOUBLE"),
        Column("magnitude", "DOUBLE"),
        Column("reason", "VARCHAR"),
        Column("learning_rate_before", "DOUBLE"),
        Column("learning_rate_after", "DOUBLE"),
    ),
    rows=lambda result: [r for a in result.attempts for r in a.recoveries],
)
STAGES = Table(
    "stages",
    (
        *KEY,
        Column("stage", "VARCHAR", "NOT NULL", "export | latency"),
        Column("status", "VARCHAR", "NOT NULL", "completed | failed | cached"),
        Column("error", "VARCHAR"),
        Column("seconds", "DOUBLE"),
    ),
    rows=lambda result: list(result.stages),
)
LOSSES = Table(
    "losses",
    (
        *KEY,
        Column("attempt", "INTEGER", "NOT NULL", value=lambda x: x[0]),
        Column("step", "INTEGER", "NOT NULL", value=lambda x: x[1]),
        Column("loss_name", "VARCHAR", "NOT NULL", value=lambda x: x[2]),
        Column("value", "DOUBLE", "", "NaN/inf kept as such: they are what happened",
               value=lambda x: float(x[3])),
    ),
    rows=lambda result: [
        (a.attempt, step, name, value) for a in result.attempts for step, name, value in a.losses
    ],
)  # fmt: skip
METRICS = Table(
    "metrics",
    (
        *KEY,
        Column("metric", "VARCHAR", "NOT NULL", value=lambda m: m[0]),
        Column("value", "DOUBLE", "", "NULL when not available, never 0", value=lambda m: m[1]),
        Column("available", "BOOLEAN", "NOT NULL", value=lambda m: m[2]),
        Column("note", "VARCHAR", "", "e.g. 'not available: no masks', 'threshold: adaptive'",
               value=lambda m: m[3]),
    ),
    rows=metric_rows,
)  # fmt: skip
ROC_POINTS = Table(
    "roc_points",
    (
        *KEY,
        Column("level", "VARCHAR", "NOT NULL", "image | pixel", value=lambda p: p[0]),
        Column("idx", "INTEGER", "NOT NULL", "order along the curve", value=POSITION),
        Column("fpr", "DOUBLE", "NOT NULL", value=lambda p: float(p[1])),
        Column("tpr", "DOUBLE", "NOT NULL", value=lambda p: float(p[2])),
    ),
    rows=lambda result: list(result.roc_points),
)
SCORES = Table(
    "scores",
    (
        *KEY,
        Column("path", "VARCHAR", "NOT NULL", value=lambda s: str(s["path"])),
        Column("label", "INTEGER", "", "0 good, 1 anomalous",
               value=lambda s: as_label(s.get("label"))),
        Column("defect_type", "VARCHAR", value=lambda s: s.get("defect_type")),
        Column("score", "DOUBLE", value=lambda s: as_float(s.get("score"))),
    ),
    rows=lambda result: list(result.scores),
)  # fmt: skip
LATENCY = Table(
    "latency",
    (
        *KEY,
        Column("idx", "INTEGER", "NOT NULL", "order given by training; 0 is the headline figure",
               value=POSITION),
        Column("path", "VARCHAR", "NOT NULL", "inference path: torch-fp32, openvino-int8, ..."),
        Column("batch_size", "INTEGER", "NOT NULL", "the batch of throughput_ips; p50/p95: 1"),
        Column("device", "VARCHAR", "NOT NULL"),
        Column("threads", "INTEGER"),
        Column("precision", "VARCHAR"),
        Column("p50_ms", "DOUBLE", "", "NULL when the path failed or was skipped"),
        Column("p95_ms", "DOUBLE"),
        Column("throughput_ips", "DOUBLE"),
        Column("peak_memory_mb", "DOUBLE"),
        Column("image_auroc", "DOUBLE", "", "this path's scores on the complete test split",
               value=lambda x: as_float(x.image_auroc)),
        Column("auroc_delta", "DOUBLE", "", "image_auroc minus the torch-fp32 path's",
               value=lambda x: as_float(x.auroc_delta)),
        Column("status", "VARCHAR", "NOT NULL DEFAULT 'ok'", "ok | failed | skipped"),
        Column("error", "VARCHAR", "", "why it failed or was skipped"),
        Column("timed_runs", "INTEGER", "", "batch-1 runs behind p50/p95"),
        Column("warmup_runs", "INTEGER"),
        Column("setup_seconds", "DOUBLE", "", "conversion, quantisation, compilation"),
        Column("calibration_paths", "VARCHAR[]", "", "int8 calibration images (never test)",
               value=lambda x: list(x.calibration_paths)),
        Column("hardware", "VARCHAR", "", "CPU name, cpus and features, or GPU name"),
    ),
    rows=lambda result: list(result.latency),
)  # fmt: skip
ARTIFACTS = Table(
    "artifacts",
    (
        *KEY,
        Column("kind", "VARCHAR", "NOT NULL", "e.g. overlay_best_0, checkpoint",
               value=lambda a: a[0]),
        Column("path", "VARCHAR", "NOT NULL", value=lambda a: str(a[1])),
    ),
    rows=lambda result: list(result.artifacts.items()),
)  # fmt: skip

TABLES = (
    SCHEMA_VERSION_TABLE,
    RUNS,
    CELLS,
    VALIDATIONS,
    RESULTS,
    TRAINING_ATTEMPTS,
    RECOVERIES,
    STAGES,
    LOSSES,
    METRICS,
    ROC_POINTS,
    SCORES,
    LATENCY,
    ARTIFACTS,
)
# Tables keyed by (run_id, model, category): write_result replaces all of them at once.
RESULT_TABLES = tuple(t.name for t in TABLES if t.rows is not None)

# The latest schema, for a new file.
SCHEMA = "\n".join(table.ddl() for table in TABLES)

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
