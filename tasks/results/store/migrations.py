"""The store's schema versions: forward migrations, and bringing a file up to date.

The file carries its schema version (`schema_version`); opening an older file applies
the forward `MIGRATIONS` in one transaction, and a file from a newer release is refused
with `SchemaError` before anything is written. A column added to a table declaration
(`tasks.results.store.schema`) needs its step here, with `SCHEMA_VERSION` raised.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.results.store.rows import utcnow
from tasks.results.store.schema import CELLS, LEASE, SCHEMA, VIEWS


class SchemaError(RuntimeError):
    """The file is not a results store this code can use (newer schema, failed migration)."""


SCHEMA_VERSION = 4


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
    # the run's process and lease (a killed run is recognised), and the cells table
    4: [*(f"ALTER TABLE runs ADD COLUMN {c.name} {c.type}" for c in LEASE), CELLS.ddl()],
}


def schema_version(con: duckdb.DuckDBPyConnection, db_path: Path) -> int:
    """The file's schema version: 0 for an empty file, 1 for a file from before versions
    were recorded; `SchemaError` for a DuckDB file that is not a results store."""
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


def create_or_migrate(con: duckdb.DuckDBPyConnection, db_path: Path, code_version: str) -> int:
    """Create the schema in an empty file or migrate an older one to `SCHEMA_VERSION`,
    on `con` (inside the caller's transaction); returns the version found."""
    found = schema_version(con, db_path)
    if found == 0:
        con.execute(SCHEMA)
        steps = [SCHEMA_VERSION]
    else:
        steps = list(range(found + 1, SCHEMA_VERSION + 1))
        for step in steps:
            for sql in MIGRATIONS[step]:
                con.execute(sql)
    con.execute(VIEWS)
    for step in steps:
        con.execute(
            "INSERT INTO schema_version (version, applied_at, code_version) "
            "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [step, utcnow(), code_version],
        )
    return found
