"""The life of a run in the results store: open, end, and close runs that died.

Both flows (`validate-dataset`, `anomaly-benchmark`) record themselves the same way:

    store, run_id = open_run(db, "demo", None, ["demo_grid"], ["patchcore"], "quick")
    close_abandoned_runs(store, run_id)      # earlier runs that died: labelled, cells kept
    ...                                       # each cell stored in its own transaction
    store.finish_run(run_id, run_status(failures, stored=3), error="; ".join(failures))

and register `mark_run_ended` as their on_failure, on_crashed and on_cancellation hook,
so a run never stays `running` in DuckDB when Prefect knows it ended. Every stored cell
was written whole in its own transaction, so nothing here deletes one: a run that died
is labelled (`crashed`, `failed`, `cancelled`) and its complete cells stay readable.
Comparisons and trends only use completed runs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run

from tasks.results.store.result_store import (
    DEFAULT_LOCK_TIMEOUT_S,
    ResultStore,
    SchemaError,
    StoreBusy,
)

DEFAULT_DB = "results/benchmark.duckdb"

log = logging.getLogger(__name__)

# What a run is labelled when Prefect says it ended this way without telling DuckDB.
ENDED_STATUS = {"CRASHED": "crashed", "FAILED": "failed", "CANCELLED": "cancelled"}

StateOf = Callable[[str], Any]  # flow-run id -> Prefect State or None when unknown


def current_run_id() -> str:
    return str(flow_run.get_id() or uuid.uuid4())


def open_run(
    db: str,
    dataset: str,
    data_root: str | None,
    categories: list[str] | None,
    models: list[str],
    profile: str | None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> tuple[ResultStore, str]:
    """The store and this flow run's id, with the run recorded as `running`.

    Opening the store checks (and migrates) its schema, so a store that cannot be used
    stops the run here, before any training."""
    run_id = current_run_id()
    store = ResultStore(db, lock_timeout_s=lock_timeout_s)
    store.start_run(
        run_id,
        flow_run_id=flow_run.get_id(),
        dataset=dataset,
        data_root=str(data_root or ""),
        categories=list(categories or []),
        models=models,
        profile=profile,
    )
    return store, run_id


def run_status(failures: list[str], stored: int) -> str:
    """`completed` when no cell failed, `incomplete` when some were stored, else `failed`."""
    if not failures:
        return "completed"
    return "incomplete" if stored else "failed"


def mark_run_ended(flow, flow_run, state) -> None:
    """Prefect state hook (on_failure, on_crashed, on_cancellation): a run that ended
    without recording its end is labelled with Prefect's state and message. A run that
    already recorded its end (`incomplete`, `failed_validation`) keeps it.

    When the store stays busy, the run stays `running` and the next run closes it
    (`close_abandoned_runs`)."""
    params = flow_run.parameters or {}
    db = Path(params.get("db", DEFAULT_DB))
    if not db.exists():  # the run failed before it was recorded
        return
    status = ENDED_STATUS.get(state.type.value, state.type.value.lower())
    try:
        store = ResultStore(
            db, lock_timeout_s=params.get("db_lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S)
        )
        store.close_if_running(str(flow_run.id), status, state.message or None)
    except (StoreBusy, SchemaError) as err:
        log.error(
            "run %s stays 'running' in the store; the next run closes it: %s", flow_run.id, err
        )


def prefect_state_of(flow_run_id: str):
    """The flow run's state from the Prefect API, None when this server does not know it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(uuid.UUID(flow_run_id)).state
        except Exception:  # noqa: BLE001 - unknown to this server (or not a uuid)
            return None


def close_abandoned_runs(
    store: ResultStore, run_id: str, state_of: StateOf = prefect_state_of
) -> list[str]:
    """Runs still `running` in the store whose flow run Prefect knows ended (a killed
    worker, a hook that found the store busy): label them with how they ended and why.
    Their stored cells are kept. Returns the ids closed. `make demo` marks the flow runs
    of a dead worker Crashed when it starts a new worker (scripts/stack.py)."""
    closed = []
    for other, other_flow_run in store.running_runs(except_run_id=run_id):
        state = state_of(other_flow_run) if other_flow_run else None
        if state is None or not state.is_final():
            continue
        status = ENDED_STATUS.get(state.type.value, "crashed")
        why = f"Prefect flow run ended {state.type.value}"
        if state.message:
            why += f": {state.message}"
        if store.close_if_running(other, status, f"closed by run {run_id}: {why}"):
            closed.append(other)
    if closed:
        _logger().warning("closed abandoned runs (stored cells kept): %s", ", ".join(closed))
    return closed


def describe_run() -> str:
    """Flow-run names that say what ran, e.g. 'demo/quick: patchcore,efficientad on demo_grid'."""
    params = flow_run.parameters
    what = params.get("dataset", "?")
    if params.get("profile"):
        what += f"/{params['profile']}"
    if params.get("models"):
        what += ": " + ",".join(params["models"])
    cats = ",".join(params.get("categories") or []) or "all categories"
    return f"{what} on {cats}"


def split_list(text: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None or '' -> None (the CLIs' comma lists)."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log
