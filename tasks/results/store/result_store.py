"""The DuckDB results store: every run, validation, training attempt, metric and artifact.

The flow is the only writer; tasks return values (`ValidationReport`, `ModelResult`)
and the flow hands them here. History is kept across runs, so a run can be compared
with the previous comparable one (same dataset and profile) and the report can draw a
trend. The tables are declared in `tasks.results.store.schema`, their versions in
`tasks.results.store.migrations`.

Connections are opened per call and closed at once, so other processes (the report,
a notebook) can read the file between writes. A file another process holds is waited
for, with backoff, for `lock_timeout_s` seconds; then `StoreBusy` names the file and
its holder. `write_result` replaces one (run, model, category) in a single transaction:
a crash leaves the old rows or the new ones, never a mix.

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
import re
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import duckdb
import pandas as pd

from tasks.results.provenance import collect_environment, detect_code_version
from tasks.results.store.migrations import (
    SCHEMA_VERSION,
    SchemaError,
    create_or_migrate,
    schema_version,
)
from tasks.results.store.queries import COMPARE_SQL, HISTORY_SQL, REPORT_SQL, rows
from tasks.results.store.rows import utcnow
from tasks.results.store.schema import VALIDATIONS
from tasks.results.store.writer import insert_rows, replace_result
from tasks.results.types import ModelResult, ValidationReport
from tasks.runtime.process import ProcessIdentity, this_process
from tasks.runtime.writes import WriteFailed, ensure_dir, errno_in

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 30.0


T = TypeVar("T")


Operation = Callable[[duckdb.DuckDBPyConnection], T]


class StoreBusy(RuntimeError):
    """Another process held the DuckDB file for longer than the store waits for it."""


class StoreUnwritable(WriteFailed):
    """The DuckDB file or its folder cannot be opened or written (a read-only folder, a
    full disk); the message names the file and the OS error."""


# Cells not yet ended: a run that ends closes them (`_close_cells`).
OPEN_CELLS = ("pending", "running")


@dataclass(frozen=True)
class RunningRun:
    """A run still marked `running`, with the process that recorded it."""

    run_id: str
    flow_run_id: str | None
    process: ProcessIdentity | None  # None for a run recorded before schema version 4
    started_at: datetime
    heartbeat_at: datetime | None


class ResultStore:
    """A DuckDB file holding every benchmark run; see the README for the tables.

    Opening it creates the file, or brings an older file's schema up to date, or refuses
    a file it cannot use (`SchemaError`), so a bad store is found before any training.
    `lock_timeout_s`: how long every call waits for a file another process holds."""

    def __init__(self, db_path: str | Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.db_path = Path(db_path)
        self.lock_timeout_s = float(lock_timeout_s)
        if not (math.isfinite(self.lock_timeout_s) and self.lock_timeout_s >= 0):
            raise ValueError(
                f"db_lock_timeout_s must be a finite number of seconds >= 0, not {lock_timeout_s}"
            )
        try:
            ensure_dir(self.db_path.parent, "results store")
        except WriteFailed as err:
            raise StoreUnwritable(err.errno, str(err)) from err
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
                    if _is_os_failure(err):
                        raise StoreUnwritable(
                            errno_in(str(err)), f"results store {self.db_path}: {err}"
                        ) from err
                    raise
                remaining = deadline - time.monotonic()
                if not remaining > 0:
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
        return self._read(lambda con: schema_version(con, self.db_path))

    def _ensure_schema(self) -> None:
        version = self.schema_version()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"results store {self.db_path} has schema version {version}, newer than "
                f"this code's {SCHEMA_VERSION}: use a newer release or another --db file"
            )

        code_version = detect_code_version()
        try:  # the version is read again inside the transaction
            found = self._write(lambda con: create_or_migrate(con, self.db_path, code_version))
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
        process: ProcessIdentity | None = None,
    ) -> None:
        """Record a run as `running`, held by `process` (default: this one) with a fresh
        lease. Starting the same run_id again updates its row (status back to running,
        ended_at and error cleared) and keeps the first start time."""
        environment = environment if environment is not None else collect_environment()
        process = process or this_process()
        params = [
            run_id,
            flow_run_id,
            started_at or utcnow(),
            dataset,
            str(data_root),
            list(categories),
            list(models),
            profile,
            code_version or detect_code_version(),
            dataset_hash,
            json.dumps(environment, default=str),
            process.host,
            process.boot_id,
            process.pid,
            process.started,
            process.pid_namespace,
            utcnow(),
        ]
        self._write(
            lambda con: con.execute(
                """
                INSERT INTO runs (run_id, flow_run_id, started_at, ended_at, dataset,
                    data_root, categories, models, profile, status, code_version,
                    dataset_hash, environment, error, host, boot_id, pid, pid_started,
                    pid_namespace, heartbeat_at)
                VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, 'running', ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (run_id) DO UPDATE SET
                    flow_run_id = excluded.flow_run_id, ended_at = NULL,
                    dataset = excluded.dataset, data_root = excluded.data_root,
                    categories = excluded.categories, models = excluded.models,
                    profile = excluded.profile, status = 'running',
                    code_version = excluded.code_version,
                    dataset_hash = excluded.dataset_hash,
                    environment = excluded.environment, error = NULL,
                    host = excluded.host, boot_id = excluded.boot_id, pid = excluded.pid,
                    pid_started = excluded.pid_started,
                    pid_namespace = excluded.pid_namespace, heartbeat_at = excluded.heartbeat_at
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
        checked_at = utcnow()
        rows = [
            SimpleNamespace(
                **vars(rule), run_id=run_id, dataset=report.dataset, checked_at=checked_at
            )
            for rule in report.rules
        ]
        root = str(data_root) if data_root is not None else None

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM validations WHERE run_id = ?", [run_id])
            insert_rows(con, VALIDATIONS, rows)
            con.execute(
                """UPDATE runs SET dataset_notes = ?,
                       dataset_hash = CASE WHEN ? <> '' THEN ? ELSE dataset_hash END,
                       data_root = coalesce(?, data_root)
                   WHERE run_id = ?""",
                [list(report.notes), report.dataset_hash, report.dataset_hash, root, run_id],
            )

        self._write(write)

    def write_result(self, run_id: str, result: ModelResult) -> None:
        """Replace everything stored for (run, model, category) in one transaction, which
        also marks the cell `completed` (or `cached`, served from an earlier run)."""

        def write(con: duckdb.DuckDBPyConnection) -> None:
            replace_result(con, run_id, result)
            status = "cached" if result.cached_from else "completed"
            _set_cell(con, run_id, result.model, result.category, status, None)

        self._write(write)
        log.info("stored %s/%s for run %s", result.model, result.category, run_id)

    # ---- cells -------------------------------------------------------------------------

    def plan_cells(self, run_id: str, cells: Sequence[tuple[str, str]]) -> None:
        """Record the run's (model, category) cells as `pending` (replacing any earlier
        plan of this run)."""

        def write(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM cells WHERE run_id = ?", [run_id])
            for model, category in cells:
                con.execute(
                    "INSERT INTO cells (run_id, model, category, status) "
                    "VALUES (?, ?, ?, 'pending')",
                    [run_id, model, category],
                )

        self._write(write)

    def start_cell(
        self, run_id: str, model: str, category: str, started_at: datetime | None = None
    ) -> None:
        """The cell is running, since `started_at` (default now). Cells on a Dask cluster
        stay `pending` until their result or failure comes back, or the run is stopped."""
        self._write(
            lambda con: _set_cell(con, run_id, model, category, "running", None, started_at)
        )

    def end_cell(
        self, run_id: str, model: str, category: str, status: str, error: str | None
    ) -> None:
        """The cell ended without a stored result: `failed`, with why."""
        self._write(lambda con: _set_cell(con, run_id, model, category, status, error))

    def cells(self, run_id: str) -> dict[tuple[str, str], tuple[str, str | None]]:
        """(model, category) -> (status, error) of the run's cells."""
        rows = self._read(
            lambda con: con.execute(
                "SELECT model, category, status, error FROM cells WHERE run_id = ?", [run_id]
            ).fetchall()
        )
        return {(m, c): (status, error) for m, c, status, error in rows}

    # ---- the run's lease ---------------------------------------------------------------

    def renew_lease(self, run_id: str) -> None:
        """The run's process still lives: move its heartbeat to now."""
        self._write(
            lambda con: con.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE run_id = ? AND status = 'running'",
                [utcnow(), run_id],
            )
        )

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
            ended = con.execute(
                "UPDATE runs SET status = ?, ended_at = ?, error = ? WHERE run_id = ? "
                "RETURNING run_id",
                [status, utcnow(), error, run_id],
            ).fetchall()
            _close_cells(con, run_id, status, error)
            return ended

        if not self._write(write):
            raise KeyError(f"run {run_id!r} was never started in {self.db_path}")

    def close_if_running(
        self,
        run_id: str,
        status: str,
        error: str | None = None,
        ended_at: datetime | None = None,
    ) -> bool:
        """Label a run that is still `running` as ended (`crashed`, `failed`, ...) at
        `ended_at` (default now); its stored cells stay, each was written whole, and its
        open cells end with it. A run that already recorded its end keeps it. Returns
        whether the run was closed."""

        def write(con: duckdb.DuckDBPyConnection) -> list:
            closed = con.execute(
                """UPDATE runs SET status = ?, ended_at = ?, error = coalesce(error, ?)
                   WHERE run_id = ? AND status = 'running' RETURNING run_id""",
                [status, ended_at or utcnow(), error, run_id],
            ).fetchall()
            if closed:
                _close_cells(con, run_id, status, error)
            return closed

        return bool(self._write(write))

    # ---- reading -----------------------------------------------------------------------

    def running_runs(self, except_run_id: str | None = None) -> list[RunningRun]:
        """Every run still marked `running`, oldest first, with its process and lease."""
        rows = self._read(
            lambda con: con.execute(
                "SELECT run_id, flow_run_id, host, boot_id, pid, pid_started, pid_namespace, "
                "started_at, heartbeat_at FROM runs WHERE status = 'running' "
                "AND run_id IS DISTINCT FROM ? ORDER BY started_at",
                [except_run_id],
            ).fetchall()
        )
        return [
            RunningRun(
                run_id,
                flow_run_id,
                ProcessIdentity(*process) if process[0] and process[2] else None,
                started_at,
                heartbeat_at,
            )
            for run_id, flow_run_id, *process, started_at, heartbeat_at in rows
        ]

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
            runs = rows(con, "SELECT * FROM runs WHERE run_id = $run_id", run_id)
            if not runs:
                raise KeyError(f"run {run_id!r} is not in {self.db_path}")
            data: dict[str, Any] = {"run": runs[0]}
            for name, sql in REPORT_SQL.items():
                data[name] = rows(con, sql, run_id)
            data["comparison"] = con.execute(
                COMPARE_SQL, {"run_id": run_id, "tolerance": tolerance}
            ).df()
            data["history"] = con.execute(HISTORY_SQL, {"run_id": run_id, "limit": 20}).df()
            return data

        return self._read(read)

    def query(self, sql: str, params: Sequence[Any] | dict | None = None) -> pd.DataFrame:
        """Read-only SQL against the store (for tests and notebooks)."""
        return self._read(lambda con: con.execute(sql, params).df())


def _set_cell(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    model: str,
    category: str,
    status: str,
    error: str | None,
    started_at: datetime | None = None,
) -> None:
    """Give one cell `status` (a cell not planned is added): `running` starts its clock
    (at `started_at`, default now), any other status but `pending` ends it."""
    now = utcnow()
    if started_at is not None and started_at.tzinfo is not None:  # stored as naive UTC
        started_at = started_at.astimezone(UTC).replace(tzinfo=None)
    started = (started_at or now) if status == "running" else None
    ended = now if status not in OPEN_CELLS else None
    con.execute(
        """DELETE FROM cells WHERE run_id = ? AND model = ? AND category = ?
           RETURNING started_at""",
        [run_id, model, category],
    )
    previous = con.fetchone()
    con.execute(
        "INSERT INTO cells (run_id, model, category, status, error, started_at, ended_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [run_id, model, category, status, error, started or (previous or [None])[0], ended],
    )


def _close_cells(
    con: duckdb.DuckDBPyConnection, run_id: str, run_status: str, why: str | None
) -> None:
    """The run ended: its cells still pending or running end with it, `cancelled` or
    `crashed` as the run, else `failed`, with the run's reason."""
    status = run_status if run_status in ("cancelled", "crashed") else "failed"
    con.execute(
        """UPDATE cells SET status = ?, ended_at = ?,
               error = CASE WHEN status = 'pending' THEN 'not started: ' ELSE '' END
                       || ? || coalesce(': ' || ?, '')
           WHERE run_id = ? AND status IN ('pending', 'running')""",
        [status, utcnow(), f"the run ended {run_status}", why, run_id],
    )


def _is_os_failure(err: duckdb.Error) -> bool:
    """The file or its folder could not be opened or written: read-only, full, no access."""
    return errno_in(str(err)) is not None


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
