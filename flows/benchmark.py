"""The `anomaly-benchmark` flow: validate, then train and evaluate each (model, category),
store every result in DuckDB, and render the HTML comparison report.

    python -m flows.benchmark --dataset demo --models patchcore,efficientad --profile quick

It exits 0 when every (model, category) produced results. The flow is the only writer
of the DuckDB file; training tasks return values to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.validate_dataset import (
    DEFAULT_DB,
    DatasetValidationFailed,
    check_dataset,
    close_abandoned_runs,
    describe_run,
    mark_run_ended,
    open_run,
    split_list,
)
from tasks.profiles import Profile, ProfileError, load_profile
from tasks.report import render_report
from tasks.results import DatasetError, DatasetSpec, ModelResult
from tasks.training import train_and_evaluate

MODELS = ("patchcore", "efficientad")
CODE_VERSION_FILES = ("tasks/training.py", "tasks/backbones.py", "tasks/efficientad_offline.py")


class BenchmarkIncomplete(RuntimeError):
    """Some (model, category) produced no result; the others are stored."""


def _code_fingerprint() -> str:
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in CODE_VERSION_FILES:
        path = root / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def training_cache_key(context, parameters: dict) -> str:
    """Same data (hash), same settings, same code: the trained result is reused."""
    profile: Profile = parameters["profile"]
    key = {
        "model": parameters["model_name"],
        "category": parameters["category"],
        "dataset_hash": parameters["dataset_hash"],
        "profile": profile.model_dump(mode="json"),
        "code": _code_fingerprint(),
    }
    return "train-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def only_infrastructure_faults(task, task_run, state) -> bool:
    """Retry crashes of the machinery (I/O, memory, interrupted workers), never bad data."""
    try:
        state.result()
    except (DatasetError, ProfileError, ValueError, TypeError):
        return False
    except Exception:  # noqa: BLE001 - anything else is worth one more try
        return True
    return False


@task(
    name="train-and-evaluate",
    task_run_name="{model_name} on {category}",
    cache_key_fn=training_cache_key,
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=only_infrastructure_faults,
)
def train_and_evaluate_task(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_dir: Path,
    dataset_hash: str,
) -> ModelResult:
    logger = get_run_logger()
    artifact_id = create_progress_artifact(
        progress=0.0,
        description=f"training {model_name} on {category}",
    )

    def progress(fraction: float, message: str) -> None:
        update_progress_artifact(artifact_id, progress=round(100 * min(max(fraction, 0), 1), 1))
        logger.info("%s/%s: %s", model_name, category, message)

    result = train_and_evaluate(model_name, category, spec, profile, run_dir, progress=progress)
    update_progress_artifact(artifact_id, progress=100.0)
    return result


@task(name="render-report", cache_policy=NO_CACHE)
def render_report_task(db: str, run_id: str, reports_dir: str) -> Path:
    return render_report(db, run_id, reports_dir)


def comparison_rows(results: list[ModelResult]) -> list[dict]:
    rows = []
    for r in results:
        batch1 = next((lat for lat in r.latency if lat.p50_ms is not None), None)  # batch-1 p50
        rows.append(
            {
                "category": r.category,
                "model": r.model,
                "image_auroc": r.metrics.get("image_auroc"),
                "pixel_auroc": r.metrics.get("pixel_auroc"),
                "weights": r.weights.get("source", "?"),
                "p50_ms": batch1.p50_ms if batch1 else None,
                "attempts": len(r.attempts),
            }
        )
    return rows


@flow(
    name="anomaly-benchmark",
    flow_run_name=describe_run,
    log_prints=True,
    on_crashed=[mark_run_ended],
    on_cancellation=[mark_run_ended],
)
def benchmark(
    dataset: str = "demo",
    data_root: str | None = None,
    categories: list[str] | None = None,
    models: list[str] | None = None,
    profile: str = "quick",
    overrides: dict | None = None,
    db: str = DEFAULT_DB,
    output_dir: str = "runs",
    reports_dir: str = "reports",
) -> str:
    """Validate the dataset, train+evaluate every (model, category), store, report."""
    logger = get_run_logger()
    models = list(models or MODELS)
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}: choose from {list(MODELS)}")
    settings = load_profile(profile, overrides)
    store, run_id = open_run(db, dataset, data_root, categories, models, profile)

    close_abandoned_runs(store, run_id)
    spec, report = check_dataset(dataset, data_root, categories, store, run_id)
    if spec is None or not report.passed:
        store.finish_run(run_id, "failed_validation")
        raise DatasetValidationFailed(report.summary())

    run_dir = Path(output_dir) / run_id
    results, failed = [], []
    # one cell at a time: two trainings would only fight over the same CPU cores
    for category in spec.categories:
        for model in models:
            state = train_and_evaluate_task(
                model,
                category,
                spec,
                settings,
                run_dir / model / category,
                report.dataset_hash,
                return_state=True,
            )
            try:
                result = state.result()
            except Exception as err:  # noqa: BLE001 - one failed cell must not lose the others
                logger.error("%s on %s produced no result: %s", model, category, err)
                failed.append(f"{model}/{category}: {err}")
                continue
            store.write_result(run_id, result)  # one transaction per (run, model, category)
            results.append(result)

    status = "completed" if not failed else "incomplete"
    store.finish_run(run_id, status)
    report_path = render_report_task(db, run_id, reports_dir)
    store.write_artifact(run_id, "*", "*", "report", str(Path(report_path).resolve()))
    create_link_artifact(
        key="benchmark-report",
        link=Path(report_path).resolve().as_uri(),
        link_text=f"HTML report for run {run_id}",
        description="self-contained HTML report",
    )
    create_table_artifact(
        key="benchmark-comparison",
        table=comparison_rows(results),
        description=f"image AUROC per category and model, run {run_id}",
    )
    logger.info("report written to %s", Path(report_path).resolve())
    if failed:
        raise BenchmarkIncomplete("; ".join(failed))
    return str(report_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=["demo", "mvtec", "folder"], default="demo")
    parser.add_argument("--data-root", default=None, help="dataset root (demo: data/demo)")
    parser.add_argument("--categories", default=None, help="comma-separated, default: all")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--profile", choices=["quick", "paper"], default="quick")
    parser.add_argument(
        "--overrides",
        default=None,
        help='JSON of profile overrides, e.g. \'{"efficientad": {"max_steps": 20}}\'',
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    parser.add_argument("--output-dir", default="runs", help="models and overlays go here")
    parser.add_argument("--reports-dir", default="reports", help="HTML reports go here")
    args = parser.parse_args(argv)
    state = benchmark(
        dataset=args.dataset,
        data_root=args.data_root,
        categories=split_list(args.categories),
        models=split_list(args.models) or [],
        profile=args.profile,
        overrides=json.loads(args.overrides) if args.overrides else None,
        db=args.db,
        output_dir=args.output_dir,
        reports_dir=args.reports_dir,
        return_state=True,
    )
    if state.is_completed():
        print(f"report: {Path(state.result()).resolve()}")
        return 0
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - shown to the user, exit code says it failed
        print(err, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
