"""Writing one result: every table keyed by (run, model, category), from the declarations.

`replace_result` deletes the cell's rows and inserts its new ones table by table; the
column lists come from `tasks.results.store.schema`, so nothing here names a column.
Lists are unnested inside DuckDB, which keeps NaN as NaN (a pandas scan would turn it
into NULL) and stays fast for hundreds of thousands of loss steps.

Example:
    >>> replace_result(con, "r1", model_result)  # inside the caller's transaction
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from tasks.results.store.schema import KEY, TABLES, Table
from tasks.results.types import ModelResult

RESULT_DECLARATIONS = tuple(t for t in TABLES if t.rows is not None)


def replace_result(con: duckdb.DuckDBPyConnection, run_id: str, result: ModelResult) -> None:
    """Replace everything stored for (run, model, category) with `result`'s rows."""
    key = (run_id, result.model, result.category)
    keys = " AND ".join(f"{c.name} = ?" for c in KEY)
    for table in RESULT_DECLARATIONS:
        con.execute(f"DELETE FROM {table.name} WHERE {keys}", key)
    for table in RESULT_DECLARATIONS:
        insert_rows(con, table, table.rows(result), key)


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: Table, rows: Sequence[Any], key: tuple = ()
) -> None:
    """Insert `rows` into `table` in one statement: `key` fills the leading key columns,
    each other column's value is read from every row as its declaration says."""
    if not rows:
        return
    columns = table.value_columns
    values = [[column.read(row, i) for i, row in enumerate(rows)] for column in columns]
    names = ", ".join([*(c.name for c in KEY[: len(key)]), *(c.name for c in columns)])
    selects = ", ".join(["?"] * len(key) + [f"unnest(?::{c.type}[])" for c in columns])
    con.execute(f"INSERT INTO {table.name} ({names}) SELECT {selects}", [*key, *values])
