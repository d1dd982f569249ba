"""The `anomaly-benchmark` flow: validate, then train and evaluate each (model, category),
store every result in DuckDB, and render the HTML comparison report.

    python -m flows.benchmark --dataset demo --models patchcore,efficientad --profile quick
    python -m flows.benchmark --dataset mvtec --categories all --cluster tcp://sched:8786
    python -m flows.benchmark --reconcile --db results/benchmark.duckdb

It exits 0 when every (model, category) produced results, 2 when a parameter is refused
(before anything starts), 130 or 143 when SIGINT (Ctrl-C) or SIGTERM stopped it, else 1.
Cells run in this process or on a Dask cluster (`--cluster`, see tasks.runtime.cluster);
either way the flow is the only writer of the DuckDB file: cells return values and the
flow stores each one as it completes, one transaction per cell. A cell whose training or
storing fails is listed in the run's `error`, the other cells go on, and the run ends
`incomplete` (or `failed` when nothing was stored). A signal stops the run within
seconds: the cell in flight and the run are recorded `cancelled`, completed cells are
kept (tasks.results.runs). `--reconcile` labels `crashed` the runs of the store whose
process died without recording an end (a `kill -9`, a lost host); every run does the same
when it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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
from prefect.task_runners import TaskRunner

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
    prefect_state_of,
    run_end_recorded,
    run_status,
)
from tasks.results.store.result_store import DEFAULT_LOCK_TIMEOUT_S, ResultStore
from tasks.results.types import DatasetSpec, ModelResult, deployable
from tasks.runtime.cluster import (
    CLUSTER_HELP,
    ClusterError,
    ClusterSpec,
    listing_fingerprint,
    parse_cluster,
    task_runner_for,
)
from tasks.runtime.interrupts import RunInterrupted, received, stop_on_signals
from tasks.runtime.parameters import (
    BenchmarkParameters,
    ParameterError,
    parse_overrides,
    split_names,
)
from tasks.runtime.paths import artifact_dir
from tasks.runtime.prefect_server import prefect_api
from tasks.runtime.profiles import PROFILES, Profile, ProfileError, load_profile
from tasks.runtime.retries import retry_transient_faults
from tasks.runtime.ui_logs import shown_in_ui
from tasks.runtime.writes import ensure_dir
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
    in_process: bool = False,
) -> tuple[list[ModelResult], list[str]]:
    """Train every cell and store each result as it completes; a failed or lost cell is
    reported and never holds back the others. `in_process`: one after another in this
    process's main thread, where a signal stops the cell in flight at once; else
    submitted to this flow's task runner (chosen by the caller with `with_options`)."""
    logger = get_run_logger()
    store = ResultStore(db, lock_timeout_s=db_lock_timeout_s)
    results, failed = [], []

    def arguments(model: str, category: str) -> tuple:
        fingerprint = data_fingerprints[category]
        return model, category, spec, settings, run_root, dataset_hash, fingerprint, run_id

    def store_outcome(model: str, category: str, outcome) -> None:
        try:
            result = mark_cached(outcome(), run_id)
            store.write_result(run_id, result)  # one transaction per (run, model, category)
        except Exception as err:  # noqa: BLE001 - one failed cell must not lose the others
            logger.error("%s/%s was not stored: %s", model, category, err)
            failed.append(f"{model}/{category}: {err}")
            with contextlib.suppress(Exception):  # the store itself may be what failed
                store.end_cell(run_id, model, category, "failed", f"{type(err).__name__}: {err}")
            return
        logger.info(cell_summary(result))
        results.append(result)

    with stop_on_signals():  # Prefect puts its own SIGTERM handler back for a subflow
        # once per run, before the cells; a failure is logged, and its cells then fail
        # with their own error
        for model in registry.preparing(dict.fromkeys(model for model, _ in cells)):
            if in_process:
                prepare_model_task(model, settings, return_state=True)
            else:
                prepare_model_task.submit(model, settings).wait()
        if in_process:
            for model, category in cells:
                try:
                    store.start_cell(run_id, model, category)
                except Exception as err:  # noqa: BLE001 - the cell may still be stored
                    logger.warning("%s/%s: its start was not recorded: %s", model, category, err)
                cell = functools.partial(train_and_evaluate_task, *arguments(model, category))
                store_outcome(model, category, cell)
            return results, failed
        futures = {train_and_evaluate_task.submit(*arguments(m, c)): (m, c) for m, c in cells}
        try:
            for future in as_completed(list(futures)):
                store_outcome(*futures[future], future.result)
        except RunInterrupted:
            for future, (model, category) in futures.items():
                with contextlib.suppress(Exception):  # what the cluster says, if it answers
                    state = future.state  # a cell running on a worker: in flight, cancelled
                    if state.is_running():
                        store.start_cell(run_id, model, category, started_at=state.timestamp)
                    future.wrapped_future.cancel()  # queued cells never start
            raise
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


def comparison_rows(
    results: list[ModelResult], models: Sequence[str] = (), categories: Sequence[str] = ()
) -> list[dict]:
    """The UI's comparison table: one row per (category, model), in the run's order of
    categories and models, with the model's deployable path (as the report's headline)."""

    def place(r: ModelResult) -> tuple:
        c = categories.index(r.category) if r.category in categories else len(categories)
        m = models.index(r.model) if r.model in models else len(models)
        return (c, r.category, m, r.model)

    rows = []
    for r in sorted(results, key=place):
        best = deployable(r.latency)
        rows.append(
            {
                "category": r.category,
                "model": r.model,
                "image_auroc": r.metrics.get("image_auroc"),
                "pixel_auroc": r.metrics.get("pixel_auroc"),
                "deployable_path": best.path if best else None,
                "p50_ms": best.p50_ms if best else None,
                "img_per_s": best.throughput_ips if best else None,
                "weights": r.weights.get("source", "?"),
                "attempts": len(r.attempts),
                "worker": r.worker,
            }
        )
    return rows


@dataclass(frozen=True)
class RunRequest:
    """A benchmark's parameters, checked, as the run uses them."""

    params: BenchmarkParameters
    settings: Profile
    models: list[str]
    where: ClusterSpec
    runner: TaskRunner


def check_request(params: BenchmarkParameters) -> RunRequest:
    """Everything that can be refused before a run starts (the CLI calls it before it
    starts anything, the flow before it records the run): the profile and its settings,
    the models, the cluster (a host without GPUs says so here)."""
    settings = load_profile(params.profile, params.overrides)
    models = params.chosen("models", MODELS)
    registry.check_models(models, settings)  # unknown names, bad settings
    where = parse_cluster(params.cluster)
    return RunRequest(params, settings, models, where, task_runner_for(where))


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

    `categories`, `models`: left out or `["all"]` for every one, else each named once.
    `cluster` says where cells run: none | local:N | tcp://host:port | cuda."""
    params = BenchmarkParameters.check(**locals())  # the CLI's rules: blanks, repeats, NaN
    logger = get_run_logger()
    request = check_request(params)
    settings, models, where, runner = (
        request.settings,
        request.models,
        request.where,
        request.runner,
    )
    categories = expand_categories(dataset, params.categories)
    store, run_id = open_run(
        db, dataset, data_root, categories, models, profile, lock_timeout_s=db_lock_timeout_s
    )
    with run_end_recorded(store, run_id) as end:  # lease; signals -> cancelled; failures
        close_abandoned_runs(store, run_id)
        try:  # before validation and training: a missing asset fails the run here
            prepare_assets_task(settings, models, dataset, categories, data_root, params.overrides)
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

        # absolute, and created here: workers check they see this very folder (shared
        # filesystem); model and category names are plain (checked with the dataset)
        run_root = ensure_dir(artifact_dir(output_dir, run_id).absolute(), "output_dir")
        cells = [(model, category) for category in spec.categories for model in models]
        fingerprints = {c: listing_fingerprint(spec.category_dir(c)) for c in spec.categories}
        store.plan_cells(run_id, cells)
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
                    in_process=not where.distributed,
                )
        except Exception as err:  # e.g. the scheduler cannot be reached: the run is over
            store.finish_run(run_id, "failed", error=f"{type(err).__name__}: {err}")
            raise

        store.finish_run(run_id, run_status(failed, len(results)), error="; ".join(failed) or None)
        try:
            report_path = render_report_task(db, run_id, reports_dir)
        except Exception as err:  # the cells are stored, but the run did not do its job
            store.finish_run(run_id, "failed", error=f"report not written: {err}")
            raise
        store.write_artifact(run_id, "*", "*", "report", str(Path(report_path).resolve()))
        create_link_artifact(
            key="benchmark-report",
            link=Path(report_path).resolve().as_uri(),
            link_text=f"HTML report for run {run_id}",
            description="self-contained HTML report",
        )
        create_table_artifact(
            key="benchmark-comparison",
            table=comparison_rows(results, models, spec.categories),
            description=f"image AUROC and the deployable path per category and model, run {run_id}",
        )
        logger.info("report written to %s", Path(report_path).resolve())
        if failed:
            raise BenchmarkIncomplete("; ".join(failed))
        return str(report_path)
    return end.state  # stopped by SIGINT or SIGTERM: the flow run ends Cancelled


REFUSED = (ParameterError, ProfileError, registry.UnknownModel, ClusterError)


def reconcile(db: str, lock_timeout_s: float) -> int:
    """`--reconcile`: label `crashed` the runs of `db` whose process died without
    recording an end (and, with PREFECT_API_URL set, those Prefect saw end)."""
    from prefect.settings import PREFECT_API_URL

    if not Path(db).is_file():
        print(f"no results store at {db}", file=sys.stderr)
        return 1
    store = ResultStore(db, lock_timeout_s=lock_timeout_s)
    state_of = prefect_state_of if PREFECT_API_URL.value() else None
    closed = close_abandoned_runs(
        store, None, state_of, closed_by="python -m flows.benchmark --reconcile"
    )
    for run_id in closed:
        status, error = store.query(
            "SELECT status, error FROM runs WHERE run_id = ?", [run_id]
        ).iloc[0]
        print(f"{run_id}: {status}: {error}")
    running = len(store.running_runs())
    print(f"{len(closed)} dead runs closed; {running} still running in {db}")
    return 0


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
        help="comma-separated, each once; 'all' or left out = every category of the dataset "
        "(mvtec: all 15; folder: those present)",
    )
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated, each once, of {', '.join(MODELS)}; 'all' or left out = all",
    )
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
    parser.add_argument(
        "--reconcile",
        action="store_true",
        help="only label `crashed` the runs of --db whose process died, then exit",
    )
    args = parser.parse_args(argv)
    if args.reconcile:
        return reconcile(args.db, args.db_lock_timeout_s)
    try:
        params = BenchmarkParameters.check(
            dataset=args.dataset,
            data_root=args.data_root,
            categories=split_names(args.categories),
            models=split_names(args.models),
            profile=args.profile,
            overrides=parse_overrides(args.overrides),
            db=args.db,
            output_dir=args.output_dir,
            reports_dir=args.reports_dir,
            cluster=args.cluster,
            db_lock_timeout_s=args.db_lock_timeout_s,
        )
        check_request(params)  # before a server or a run starts
    except REFUSED as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    with stop_on_signals():  # through the flow, and the temporary server's start and stop
        try:
            with prefect_api():
                state = benchmark(**params.model_dump(), return_state=True)
        except RunInterrupted as stop:  # before the run was recorded, or after it ended
            print(f"benchmark {stop}", file=sys.stderr)
            return stop.exit_code
    if state.is_completed():
        print(f"report: {Path(state.result()).resolve()}")
        return 0
    if state.is_cancelled():
        print(state.message, file=sys.stderr)
        return 128 + (received() or 2)
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - shown to the user, exit code says it failed
        print(err, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
