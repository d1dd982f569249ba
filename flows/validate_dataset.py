"""The `validate-dataset` flow: build the manifest, run pandera and Great Expectations,
store every rule's result in DuckDB, publish it to the Prefect UI, and fail the run
(with every broken rule listed) when the data is not fit to train on.

    python -m flows.validate_dataset --dataset demo --categories demo_grid
    python -m flows.validate_dataset --dataset folder --data-root ~/my_parts --categories screws

Exit code 0: valid; 1: not valid (the summary names each rule and file); 2: a parameter
refused (nothing started); 130 or 143: stopped by SIGINT or SIGTERM (run `cancelled`).
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from tasks.results.runs import (
    DEFAULT_DB,
    close_abandoned_runs,
    describe_run,
    mark_run_ended,
    open_run,
    run_end_recorded,
)
from tasks.results.store.result_store import DEFAULT_LOCK_TIMEOUT_S
from tasks.runtime.interrupts import RunInterrupted, received, stop_on_signals
from tasks.runtime.parameters import ParameterError, RunParameters, split_names
from tasks.runtime.prefect_server import prefect_api
from tasks.validation.gate import DatasetValidationFailed, check_dataset


@flow(
    name="validate-dataset",
    flow_run_name=describe_run,
    log_prints=True,
    on_failure=[mark_run_ended],
    on_crashed=[mark_run_ended],
    on_cancellation=[mark_run_ended],
)
def validate_dataset_flow(
    dataset: str = "demo",
    data_root: str | None = None,
    categories: list[str] | None = None,
    db: str = DEFAULT_DB,
    db_lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> bool:
    """Validate a dataset (demo, mvtec or a folder); fail the run if any rule is broken.
    `categories`: left out or `["all"]` for every one, else each named once."""
    RunParameters.check(**locals())  # the CLI's rules: blanks, repeats, NaN
    store, run_id = open_run(
        db, dataset, data_root, categories, [], None, lock_timeout_s=db_lock_timeout_s
    )
    with run_end_recorded(store, run_id) as end:  # lease; signals -> cancelled; failures
        close_abandoned_runs(store, run_id)
        _, report = check_dataset(dataset, data_root, categories, store, run_id)
        if report.passed:
            store.finish_run(run_id, "completed")
        else:
            store.finish_run(run_id, "failed_validation", error=report.summary())
            raise DatasetValidationFailed(report.summary())
        return True
    return end.state  # stopped by SIGINT or SIGTERM: the flow run ends Cancelled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.validate_dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=["demo", "mvtec", "folder"], default="demo")
    parser.add_argument("--data-root", default=None, help="dataset root (demo: data/demo)")
    parser.add_argument(
        "--categories", default=None, help="comma-separated, each once; 'all' or left out: all"
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    parser.add_argument(
        "--db-lock-timeout-s",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT_S,
        help="how long to wait for a DuckDB file another program holds (seconds)",
    )
    args = parser.parse_args(argv)
    try:
        params = RunParameters.check(
            dataset=args.dataset,
            data_root=args.data_root,
            categories=split_names(args.categories),
            db=args.db,
            db_lock_timeout_s=args.db_lock_timeout_s,
        )
    except ParameterError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    with stop_on_signals():  # through the flow, and the temporary server's start and stop
        try:
            with prefect_api():
                state = validate_dataset_flow(**params.model_dump(), return_state=True)
        except RunInterrupted as stop:
            print(f"validation {stop}", file=sys.stderr)
            return stop.exit_code
    if state.is_completed():
        print(f"dataset {args.dataset}: valid")
        return 0
    if state.is_cancelled():
        print(state.message, file=sys.stderr)
        return 128 + (received() or 2)
    try:
        state.result()
    except DatasetValidationFailed as err:
        print(err, file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - shown to the user, exit code says it failed
        print(f"validation did not run: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
