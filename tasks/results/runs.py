"""The life of a run in the results store: open, keep alive, end, and close runs that died.

Both flows (`validate-dataset`, `anomaly-benchmark`) record themselves the same way:

    store, run_id = open_run(db, "demo", None, ["demo_grid"], ["patchcore"], "quick")
    with run_end_recorded(store, run_id) as end:  # lease, signals, failures
        close_abandoned_runs(store, run_id)  # earlier runs that died: labelled, cells kept
        ...                                  # each cell stored in its own transaction
        store.finish_run(run_id, run_status(failures, stored=3), error="; ".join(failures))
        return result
    return end.state                         # SIGINT or SIGTERM: Prefect's Cancelled state

and register `mark_run_ended` as their on_failure, on_crashed and on_cancellation hook,
so a run never stays `running` in DuckDB when Prefect knows it ended.

Inside `run_end_recorded`, SIGINT (Ctrl-C) or SIGTERM (`kill`, a cancel from the Prefect
UI, which the worker delivers as SIGTERM) stops the run where it is
(`tasks.runtime.interrupts`): the cell in flight and the run are recorded `cancelled`,
the cells already stored are kept, and the flow ends Cancelled. An exception is recorded
as the run `failed`, with its message, before it goes on up.

A run killed outright (SIGKILL, the OOM killer, a lost host) records nothing, and its
Prefect state may stay RUNNING for ever. So a run records its process (host, boot, pid
namespace, pid, start time) and renews a lease while it lives; the next run on the store, or
`python -m flows.benchmark --reconcile`, labels a run `crashed` when its process is gone
(same host) or its lease ran out (another host), saying when and why, whatever Prefect
says. Every stored cell was written whole in its own transaction, so nothing here
deletes one: a run that died is labelled (`crashed`, `failed`, `cancelled`) and its
complete cells stay readable. Comparisons and trends only use completed runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled, State

from tasks.results.store.result_store import (
    DEFAULT_LOCK_TIMEOUT_S,
    ResultStore,
    RunningRun,
    SchemaError,
    StoreBusy,
)
from tasks.results.store.rows import utcnow
from tasks.runtime.interrupts import RunInterrupted, stop_on_signals, stopped_by
from tasks.runtime.process import is_alive

DEFAULT_DB = "results/benchmark.duckdb"

log = logging.getLogger(__name__)

# What a run is labelled when Prefect says it ended this way without telling DuckDB.
ENDED_STATUS = {"CRASHED": "crashed", "FAILED": "failed", "CANCELLED": "cancelled"}

StateOf = Callable[[str], Any]  # flow-run id -> Prefect State or None when unknown

# A run renews its lease this often; one whose process cannot be checked from here (another
# host) is taken for dead when its lease is this old: many missed renewals, not one slow one.
LEASE_RENEW_S = 30.0
LEASE_EXPIRY_S = 600.0


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
    if not db.is_file():  # the run failed before it was recorded
        return
    status = ENDED_STATUS.get(state.type.value, state.type.value.lower())
    try:
        store = ResultStore(
            db, lock_timeout_s=params.get("db_lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S)
        )
        store.close_if_running(str(flow_run.id), status, state.message or None)
    except (StoreBusy, SchemaError, OSError, ValueError) as err:
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
    store: ResultStore,
    run_id: str | None,
    state_of: StateOf | None = prefect_state_of,
    closed_by: str | None = None,
    lease_expiry_s: float = LEASE_EXPIRY_S,
) -> list[str]:
    """Label the runs still `running` in the store that are dead: `crashed` when their
    process is gone or their lease ran out (`why_dead`), else as Prefect saw them end
    when it knows (a hook that found the store busy). Their stored cells are kept, their
    open cells closed. `run_id`: the run asking (left alone), `closed_by` how the label
    names it. Returns the ids closed."""
    closed = []
    by = closed_by or f"run {run_id}"
    for run in store.running_runs(except_run_id=run_id):
        reason = why_dead(run, lease_expiry_s)
        if reason is not None:
            last_seen = run.heartbeat_at or run.started_at
            if store.close_if_running(run.run_id, "crashed", f"closed by {by}: {reason}",
                                      ended_at=last_seen):  # fmt: skip
                closed.append(run.run_id)
            continue
        state = state_of(run.flow_run_id) if state_of and run.flow_run_id else None
        if state is None or not state.is_final():
            continue
        status = ENDED_STATUS.get(state.type.value, "crashed")
        why = f"Prefect flow run ended {state.type.value}"
        if state.message:
            why += f": {state.message}"
        if store.close_if_running(run.run_id, status, f"closed by {by}: {why}"):
            closed.append(run.run_id)
    if closed:
        _logger().warning("closed abandoned runs (stored cells kept): %s", ", ".join(closed))
    return closed


def why_dead(run: RunningRun, lease_expiry_s: float = LEASE_EXPIRY_S) -> str | None:
    """Why a run marked `running` cannot be running any more, or None when it may be:
    its process is gone (this host), or its lease is over `lease_expiry_s` old (a process
    another host runs, which cannot be checked from here)."""
    process = run.process
    last = run.heartbeat_at or run.started_at
    seen = f"last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC"
    if process is not None:
        alive = is_alive(process)
        if alive:
            return None
        if alive is False:
            return (
                f"its process (pid {process.pid} on {process.host}) is gone without "
                f"recording an end: killed, or crashed ({seen})"
            )
    if run.heartbeat_at is None:  # recorded before leases (schema version 3)
        return None
    if utcnow() - run.heartbeat_at > timedelta(seconds=lease_expiry_s):
        where = f"pid {process.pid} on {process.host}" if process else "its process"
        return f"no heartbeat from {where} for over {lease_expiry_s:g} s: lost ({seen})"
    return None


@contextlib.contextmanager
def keep_lease(store: ResultStore, run_id: str, every_s: float = LEASE_RENEW_S) -> Iterator[None]:
    """Renew the run's lease every `every_s` seconds, from a thread, while the block runs."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every_s):
            try:
                store.renew_lease(run_id)
            except Exception as err:  # noqa: BLE001 - a missed renewal is not fatal: say so
                log.warning("could not renew the lease of run %s: %s", run_id, err)

    thread = threading.Thread(target=renew, name=f"lease of run {run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class RunEnd:
    """How a `run_end_recorded` block ended: `state` is set when a signal stopped it."""

    state: State | None = None


@contextlib.contextmanager
def run_end_recorded(store: ResultStore, run_id: str) -> Iterator[RunEnd]:
    """The body of a recorded run: its lease renewed; SIGINT and SIGTERM stop it, and it
    is recorded `cancelled` with its open cells (`end.state`: the Cancelled state the
    flow returns); an exception is recorded as the run `failed`, unless the body
    recorded an end, and raised."""
    end = RunEnd()
    with stop_on_signals(), keep_lease(store, run_id):
        try:
            yield end
        except (RunInterrupted, TerminationSignal) as stop:
            why = f"interrupted by {stopped_by(stop).name}"
            try:
                store.finish_run(run_id, "cancelled", error=why)
            except Exception as err:  # noqa: BLE001 - the flow still ends Cancelled
                log.error("run %s could not be recorded as cancelled: %s", run_id, err)
            _logger().warning("run %s %s: completed cells kept, the others cancelled", run_id, why)
            end.state = Cancelled(message=f"run {run_id} {why}; completed cells are kept")
        except Exception as err:
            with contextlib.suppress(Exception):  # the store may be what failed
                store.close_if_running(run_id, "failed", f"{type(err).__name__}: {err}")
            raise


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


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log
