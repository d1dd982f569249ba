"""The `anomaly-benchmark` flow: validate, then train and evaluate each (model, category),
store every result in DuckDB, and render the HTML comparison report.

    python -m flows.benchmark --dataset demo --models patchcore,efficientad --profile quick
    python -m flows.benchmark --dataset mvtec --categories all --cluster tcp://sched:8786

It exits 0 when every (model, category) produced results. Cells run in this process or
on a Dask cluster (`--cluster`, see tasks.runtime.cluster); either way the flow is the only
writer of the DuckDB file: cells return values and the flow stores each one as it
completes, one transaction per cell. A cell whose training or storing fails is listed in
the run's `error`, the other cells go on, and the run ends `incomplete` (or `failed`
when nothing was stored).
"""

from __future__ import annotations

import argparse
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
from prefect.client.orchestration import get_client
from prefect.futures import as_completed
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.assets import AssetStatus, MissingAssetsError, prepare_assets
from tasks.data.datasets import expand_categories
from tasks.models import registry
from tasks.report.render import render_report
from tasks.results.runs import (
    DEFAULT_DB,
    close_abandoned_runs,
    describe_run,
    mark_run_ended,
    open_run,
    run_status,
    split_list,
)
from tasks.results.store.result_store import DEFAULT_LOCK_TIMEOUT_S, ResultStore
from tasks.results.types import DatasetSpec, ModelResult
from tasks.runtime.cluster import (
    CLUSTER_HELP,
    ClusterSpec,
    listing_fingerprint,
    parse_cluster,
    task_runner_for,
)
from tasks.runtime.paths import artifact_dir
from tasks.runtime.profiles import PROFILES, Profile, load_profile
from tasks.runtime.retries import retry_transient_faults
from tasks.runtime.ui_logs import shown_in_ui
from tasks.training.cache import mark_cached, training_cache_key
from tasks.training.cell import cell_summary, run_cell
from tasks.validation.gate import DatasetValidationFailed, check_dataset

MODELS = registry.names()


class BenchmarkIncomplete(RuntimeError):
    """Some (model, category) produced no result; the others are stored."""


# Long stages that log from plain loggers, e.g. EfficientAD's teacher distillation (its
# first cell on a host without a pretrained teacher), the PatchCore coreset, a weights
# download: every model's modules log under `tasks.models`, the asset layer's under
# `tasks.assets`, whose records then reach the task run's log.
UI_LOGGERS = ("tasks.models", "tasks.assets")


@task(name="prepare-assets", cache_policy=NO_CACHE, retries=0)
def prepare_assets_task(
    profile: Profile,
    models: list[str],
    dataset: str,
    categories: list[str] | None,
    data_root: str | None,
    overrides: dict | None,
) -> None:
    """The pre-flight check: every asset the run needs (each model's, as its registry
    entry says, and MVTec AD's), fetched where the profile allows. Without
    `assets.allow_fallback` (the paper profile) a missing one raises `MissingAssetsError`
    naming each, where it was looked for, and the fetch command; nothing is downloaded
    then. With it, substitutes stand in, and a missing asset that has none fails only the
    cells that need it."""
    logger = get_run_logger()
    plan = registry.required_assets(
        profile, models, dataset, categories, data_root=data_root, overrides=overrides
    )
    needs = {need.asset.name: need for need in plan.needs}

    def log_status(status: AssetStatus) -> None:
        need = needs[status.asset.name]
        if status.present:
            verb = "fetched" if status.fetched else "found"
            logger.info("%s %s at %s", need.asset.name, verb, status.path)
        elif need.fallback and profile.assets.fallback_allowed:
            logger.warning(
                "%s missing (%s); substitute: %s", need.asset.name, status.problem, need.fallback
            )
        elif profile.assets.fallback_allowed:  # no substitute: only its model's cells fail
            logger.error(
                "%s missing: %s; what needs it (%s) will fail",
                need.asset.name,
                status.problem,
                need.used_by,
            )
        else:
            logger.error("%s missing: %s", need.asset.name, status.problem)

    with shown_in_ui(*UI_LOGGERS):
        prepare_assets(plan, on_status=log_status)


@task(name="prepare-model", task_run_name="prepare {model_name}", cache_policy=NO_CACHE)
def prepare_model_task(model_name: str, profile: Profile) -> None:
    """A model's work done once per run before its cells (`ModelEntry.prepare`), on a
    worker of the run's cluster and its device: e.g. EfficientAD's substitute teacher,
    distilled once into the shared weights folder instead of once per worker."""
    with shown_in_ui(*UI_LOGGERS):
        registry.prepare(model_name, profile)


@task(
    name="train-and-evaluate",
    task_run_name="{model_name} on {category}",
    cache_key_fn=training_cache_key,
    persist_result=True,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient_faults,
)
def train_and_evaluate_task(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_root: str,
    dataset_hash: str,
    data_fingerprint: str,
    run_id: str,
) -> ModelResult:
    """One cell, on whichever worker the task runner picks; see `tasks.training.cell.run_cell`.
    The cache key (tasks.training.cache) leaves `run_id` out, so a cached result keeps the id of
    the run that trained it."""
    logger = get_run_logger()
    artifact_id = create_progress_artifact(
        progress=0.0,
        description=f"training {model_name} on {category}",
    )

    def progress(fraction: float, message: str) -> None:
        update_progress_artifact(artifact_id, progress=round(100 * min(max(fraction, 0), 1), 1))
        logger.info("%s", message)  # messages start with "<model>/<category>"

    with shown_in_ui(*UI_LOGGERS):
        result = run_cell(
            model_name, category, spec, profile, Path(run_root), data_fingerprint, progress=progress
        )
    result.trained_in = run_id
    update_progress_artifact(artifact_id, progress=100.0)
    return result


@flow(name="train-cells", validate_parameters=False)
def train_cells(
    cells: list[tuple[str, str]],
    spec: DatasetSpec,
    settings: Profile,
    run_root: str,
    dataset_hash: str,
    data_fingerprints: dict[str, str],
    db: str,
    db_lock_timeout_s: float,
    run_id: str,
) -> tuple[list[ModelResult], list[str]]:
    """Submit every cell to this flow's task runner (chosen by the caller with
    `with_options`) and store each result as it completes; a failed or lost cell is
    reported and never holds back the others."""
    logger = get_run_logger()
    store = ResultStore(db, lock_timeout_s=db_lock_timeout_s)
    models = dict.fromkeys(model for model, _ in cells)
    for preparing in [prepare_model_task.submit(m, settings) for m in registry.preparing(models)]:
        preparing.wait()  # a failure is logged; its cells then fail with their own error
    futures = {
        train_and_evaluate_task.submit(
            model,
            category,
            spec,
            settings,
            run_root,
            dataset_hash,
            data_fingerprints[category],
            run_id,
        ): (model, category)
        for model, category in cells
    }
    results, failed = [], []
    for future in as_completed(list(futures)):
        model, category = futures[future]
        try:
            result = mark_cached(future.result(), run_id)
            store.write_result(run_id, result)  # one transaction per (run, model, category)
        except Exception as err:  # noqa: BLE001 - one failed cell must not lose the others
            logger.error("%s/%s was not stored: %s", model, category, err)
            failed.append(f"{model}/{category}: {err}")
            continue
        logger.info(cell_summary(result))
        results.append(result)
    return results, failed


def _runner_settings(cluster: ClusterSpec) -> dict:
    """Dask workers report their task runs to the flow's Prefect API; with no
    PREFECT_API_URL that is this process's ephemeral server, so name it for them."""
    if not cluster.distributed or PREFECT_API_URL.value():
        return {}
    with get_client(sync_client=True) as client:
        return {PREFECT_API_URL: str(client.api_url)}


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
                "worker": r.worker,
            }
        )
    return rows


@flow(
    name="anomaly-benchmark",
    flow_run_name=describe_run,
    log_prints=True,
    on_failure=[mark_run_ended],
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
    cluster: str = "none",
    db_lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> str:
    """Validate the dataset, train+evaluate every (model, category), store, report.

    `cluster` says where cells run: none | local:N | tcp://host:port | cuda."""
    logger = get_run_logger()
    models = list(models or MODELS)
    settings = load_profile(profile, overrides)
    registry.check_models(models, settings)  # unknown names, bad settings: before the run
    where = parse_cluster(cluster)
    runner = task_runner_for(where)  # before the run starts: a host without GPUs says so here
    categories = expand_categories(dataset, categories)
    store, run_id = open_run(
        db, dataset, data_root, categories, models, profile, lock_timeout_s=db_lock_timeout_s
    )

    close_abandoned_runs(store, run_id)
    try:  # before validation and training: a missing asset fails the run here
        prepare_assets_task(settings, models, dataset, categories, data_root, overrides)
    except Exception as err:
        missing = isinstance(err, MissingAssetsError)
        store.finish_run(
            run_id, "failed", error=str(err) if missing else f"{type(err).__name__}: {err}"
        )
        raise
    spec, report = check_dataset(
        dataset,
        data_root,
        categories,
        store,
        run_id,
        settings.validation.directory,
        settings.assets,
    )
    if spec is None or not report.passed:
        store.finish_run(run_id, "failed_validation", error=report.summary())
        raise DatasetValidationFailed(report.summary())

    # absolute, and created here: workers check they see this very folder (shared filesystem)
    # model and category names are plain (checked with the dataset): cells stay inside too
    run_root = artifact_dir(output_dir, run_id).absolute()
    run_root.mkdir(parents=True, exist_ok=True)
    cells = [(model, category) for category in spec.categories for model in models]
    fingerprints = {c: listing_fingerprint(spec.category_dir(c)) for c in spec.categories}
    logger.info("%d cells on cluster %s", len(cells), where.describe())
    try:
        with temporary_settings(_runner_settings(where)):
            results, failed = train_cells.with_options(
                task_runner=runner, flow_run_name=f"cells on {where.describe()}"
            )(
                cells,
                spec,
                settings,
                str(run_root),
                report.dataset_hash,
                fingerprints,
                db,
                db_lock_timeout_s,
                run_id,
            )
    except Exception as err:  # e.g. the scheduler cannot be reached: the run is over
        store.finish_run(run_id, "failed", error=f"{type(err).__name__}: {err}")
        raise

    store.finish_run(run_id, run_status(failed, len(results)), error="; ".join(failed) or None)
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
    parser.add_argument(
        "--categories",
        default=None,
        help="comma-separated; 'all' = every category of the dataset (mvtec: all 15); "
        "default: those present",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--overrides",
        default=None,
        help='JSON of profile overrides, e.g. \'{"efficientad": {"max_steps": 20}}\'',
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    parser.add_argument("--output-dir", default="runs", help="models and overlays go here")
    parser.add_argument("--reports-dir", default="reports", help="HTML reports go here")
    parser.add_argument(
        "--db-lock-timeout-s",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT_S,
        help="how long to wait for a DuckDB file another program holds (seconds)",
    )
    parser.add_argument(
        "--cluster",
        default="none",
        help=f"where cells run: {CLUSTER_HELP} (see README, 'Running on a cluster')",
    )
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
        cluster=args.cluster,
        db_lock_timeout_s=args.db_lock_timeout_s,
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
