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
import uuid
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from tasks.datasets import prepare_dataset
from tasks.results import DatasetError, DatasetSpec, RuleResult, ValidationReport
from tasks.store import ResultStore
from tasks.validation import validate_dataset

DEFAULT_DB = "results/benchmark.duckdb"


class DatasetValidationFailed(RuntimeError):
    """The gate refused the dataset; the message is the readable summary."""


@task(name="prepare-dataset", retries=0)
def prepare_dataset_task(
    dataset: str, data_root: str | None, categories: list[str] | None
) -> DatasetSpec:
    return prepare_dataset(dataset, data_root, categories)


@task(name="validate-manifest", retries=0)
def validate_task(
    spec: DatasetSpec, cache_path: Path | None, validation_dir: str | None = None
) -> ValidationReport:
    _, report = validate_dataset(spec, cache_path=cache_path, validation_dir=validation_dir)
    return report


def layout_failure(
    dataset: str, categories: list[str] | None, err: DatasetError
) -> ValidationReport:
    """A dataset that cannot even be opened is a failed validation, stored like any other."""
    rule = RuleResult(
        tool="layout",
        category=",".join(categories or []) or "*",
        rule="dataset_layout",
        passed=False,
        failing_count=1,
        examples=[],
        message=str(err),
    )
    return ValidationReport(dataset=dataset, rules=[rule])


def publish_validation(report: ValidationReport, run_id: str) -> None:
    """Table + markdown artifacts: what the UI shows for the gate."""
    create_table_artifact(
        key="validation-results",
        table=[
            {
                "tool": r.tool,
                "category": r.category,
                "rule": r.rule,
                "passed": r.passed,
                "failing": r.failing_count,
                "examples": "; ".join(r.examples[:3]),
                "message": r.message,
            }
            for r in report.rules
        ],
        description=f"Dataset gate for run {run_id}: {report.summary().splitlines()[0]}",
    )
    verdict = "PASSED" if report.passed else "FAILED"
    notes = "".join(f"- {n}\n" for n in report.notes)
    create_markdown_artifact(
        key="validation-summary",
        markdown=f"## Dataset gate {verdict}\n\n```\n{report.summary()}\n```\n\n{notes}",
        description="validation summary",
    )


def check_dataset(
    dataset: str,
    data_root: str | None,
    categories: list[str] | None,
    store: ResultStore,
    run_id: str,
    validation_dir: str | None = None,
) -> tuple[DatasetSpec | None, ValidationReport]:
    """Prepare + validate (with the profile's `validation.directory`, if any), store and
    publish the result; never raises on bad data."""
    logger = get_run_logger()
    cache_path = Path(store.db_path).parent / "manifest-cache"
    try:
        spec = prepare_dataset_task(dataset, data_root, categories)
        report = validate_task(spec, cache_path, validation_dir)
    except DatasetError as err:
        spec, report = None, layout_failure(dataset, categories, err)
    store.write_validations(run_id, report)
    publish_validation(report, run_id)
    logger.info(report.summary())
    return spec, report


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


def mark_run_ended(flow, flow_run, state) -> None:
    """State hook: a crashed or cancelled flow run is never left as `running` in DuckDB.

    Each (run, model, category) is written in its own transaction, so what was stored
    before the crash is whole; the run's status says the run as a whole did not finish,
    and comparisons and trends only use completed runs."""
    db = (flow_run.parameters or {}).get("db", DEFAULT_DB)
    ResultStore(db).finish_run(str(flow_run.id), state.type.value.lower())


def close_abandoned_runs(store: ResultStore, run_id: str) -> list[str]:
    """Runs that Prefect knows ended (crashed with a killed worker, cancelled) but that
    never said goodbye to DuckDB: mark them `crashed` and drop their per-model rows, so no
    partial run sits beside complete ones. `make demo` marks the flow runs of a dead
    worker Crashed when it starts a new worker (scripts/stack.py)."""
    from prefect.client.orchestration import get_client

    candidates = store.query(
        "SELECT run_id, flow_run_id FROM runs WHERE status = 'running' AND run_id <> ?", [run_id]
    )
    closed = []
    with get_client(sync_client=True) as client:
        for other, other_flow_run in candidates.itertuples(index=False):
            try:
                state = client.read_flow_run(uuid.UUID(other_flow_run)).state
            except Exception:  # noqa: BLE001 - unknown to this server: leave it alone
                continue
            if state is not None and state.is_final():
                store.discard_partial_run(other)
                closed.append(other)
    if closed:
        get_run_logger().warning("closed abandoned runs as crashed: %s", ", ".join(closed))
    return closed


def current_run_id() -> str:
    return str(flow_run.get_id() or uuid.uuid4())


def open_run(
    db: str,
    dataset: str,
    data_root: str | None,
    categories: list[str] | None,
    models: list[str],
    profile: str | None,
) -> tuple[ResultStore, str]:
    """The store and this flow run's id, with the run recorded as `running`."""
    run_id = current_run_id()
    store = ResultStore(db)
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


@flow(
    name="validate-dataset",
    flow_run_name=describe_run,
    log_prints=True,
    on_crashed=[mark_run_ended],
    on_cancellation=[mark_run_ended],
)
def validate_dataset_flow(
    dataset: str = "demo",
    data_root: str | None = None,
    categories: list[str] | None = None,
    db: str = DEFAULT_DB,
) -> bool:
    """Validate a dataset (demo, mvtec or a folder); fail the run if any rule is broken."""
    store, run_id = open_run(db, dataset, data_root, categories, models=[], profile=None)
    _, report = check_dataset(dataset, data_root, categories, store, run_id)
    store.finish_run(run_id, "completed" if report.passed else "failed_validation")
    if not report.passed:
        raise DatasetValidationFailed(report.summary())
    return True


def split_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


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
    args = parser.parse_args(argv)
    state = validate_dataset_flow(
        dataset=args.dataset,
        data_root=args.data_root,
        categories=split_list(args.categories),
        db=args.db,
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
