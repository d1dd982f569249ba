"""The `validate-dataset` flow: build the manifest, run pandera and Great Expectations,
store every rule's result in DuckDB, publish it to the Prefect UI, and fail the run
(with every broken rule listed) when the data is not fit to train on.

    python -m flows.validate_dataset --dataset demo --categories demo_grid
    python -m flows.validate_dataset --dataset folder --data-root ~/my_parts --categories screws

Exit code 0: valid; 1: not valid (the summary names each rule and file).
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from tasks.results.runs import DEFAULT_DB, describe_run, mark_run_ended, open_run, split_list
from tasks.results.store.result_store import DEFAULT_LOCK_TIMEOUT_S
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
    """Validate a dataset (demo, mvtec or a folder); fail the run if any rule is broken."""
    store, run_id = open_run(
        db, dataset, data_root, categories, [], None, lock_timeout_s=db_lock_timeout_s
    )
    _, report = check_dataset(dataset, data_root, categories, store, run_id)
    if report.passed:
        store.finish_run(run_id, "completed")
    else:
        store.finish_run(run_id, "failed_validation", error=report.summary())
        raise DatasetValidationFailed(report.summary())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.validate_dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=["demo", "mvtec", "folder"], default="demo")
    parser.add_argument("--data-root", default=None, help="dataset root (demo: data/demo)")
    parser.add_argument("--categories", default=None, help="comma-separated, default: all")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    parser.add_argument(
        "--db-lock-timeout-s",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT_S,
        help="how long to wait for a DuckDB file another program holds (seconds)",
    )
    args = parser.parse_args(argv)
    state = validate_dataset_flow(
        dataset=args.dataset,
        data_root=args.data_root,
        categories=split_list(args.categories),
        db=args.db,
        db_lock_timeout_s=args.db_lock_timeout_s,
        return_state=True,
    )
    if state.is_completed():
        print(f"dataset {args.dataset}: valid")
        return 0
    try:
        state.result()
    except DatasetValidationFailed as err:
        print(err, file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - shown to the user, exit code says it failed
        print(f"validation did not run: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
