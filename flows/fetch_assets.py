"""The `fetch-assets` flow: download ahead every weight and dataset a profile needs, with
the libraries' own download code, verified against the published hashes; or `--check`
what is on this host.

    python -m flows.fetch_assets --profile paper
    python -m flows.fetch_assets --profile paper --dataset mvtec --categories all
    python -m flows.fetch_assets --profile paper --dest /media/usb/assets
    python -m flows.fetch_assets --profile paper --check

What a profile needs is what each model's registry entry says it needs
(`tasks.models.registry.required_assets`): PatchCore's timm backbone (wide_resnet50_2 for
`paper`), anomalib's EfficientAD teachers and imagenette, and MVTec AD with
`--dataset mvtec` (`--models none` for the dataset alone). Each asset is fetched once,
under a file lock, written atomically; a complete one is skipped, so an interrupted
fetch is resumed by running the command again (huggingface_hub also resumes a broken
transfer within one download).
Progress goes to the log (and a progress artifact in the Prefect UI).

`--check` uses no network: one line per asset, present or missing, with its size and
path; the exit code is 1 when anything is missing.

An air-gapped host (a factory line without internet):
1. on a connected machine, in a checkout of this project:
       python -m flows.fetch_assets --profile paper --dataset mvtec --categories all \\
           --dest /media/usb/assets
2. copy the folder to the air-gapped host as it is (e.g. `rsync -a /media/usb/assets/
   line-host:/srv/assets/`; keep its symbolic links: the hub cache under
   huggingface/hub links snapshots to blobs);
3. there, point the benchmark at it with one environment variable (or the profile's
   `assets.dir` setting) and check it:
       export ANOMALY_BENCHMARK_ASSETS_DIR=/srv/assets
       python -m flows.fetch_assets --profile paper --dataset mvtec --categories all --check

The folder holds `huggingface/hub/` (the hub's own cache layout, so plain timm also finds
the backbones with HF_HUB_CACHE=/srv/assets/huggingface/hub), `anomalib/pre_trained/`
and `datasets/` (imagenette, mvtec_ad).

Exit code 0: every asset is present (fetched or already there); 1: something is missing
(each missing asset is named with the reason).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from tasks.assets import (
    DATASETS,
    Asset,
    AssetPlan,
    AssetSettings,
    AssetStatus,
    MissingAssetsError,
    check_assets,
    resolve_asset,
)
from tasks.models import registry
from tasks.runtime.profiles import PROFILES, load_profile
from tasks.runtime.ui_logs import shown_in_ui

DEFAULT_MODELS = registry.names()
OWN_CACHES = "the libraries' own caches (no assets dir set)"
# a fetch ahead waits longer for a source than a benchmark's pre-flight check does
FETCH_TIMEOUT_S = 15.0


def plan_fetch(
    profile: str,
    models: Sequence[str] | None = None,
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    data_root: str | None = None,
    dest: str | None = None,
    overrides: dict | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> AssetPlan:
    """What `profile` + `models` (+ `dataset`) need, every asset to be had ('required',
    no substitute). `models` None: every model; empty: none (a dataset alone)."""
    settings = AssetSettings(download="required", dir=dest, timeout_s=timeout_s)
    return registry.required_assets(
        load_profile(profile, overrides),
        list(DEFAULT_MODELS if models is None else models),
        dataset,
        categories,
        settings=settings,
        data_root=data_root,
        overrides=overrides,
        whole_dataset=True,
    )


def listing(plan: AssetPlan, statuses: Sequence[AssetStatus]) -> str:
    """The `--check` table: per asset present or missing, size and path; then a summary."""
    root = plan.settings.root()
    lines = [
        f"cache: {root or OWN_CACHES}",
        f"{'asset':<24} {'kind':<9} {'status':<8} {'size':>9}  path",
        *(status.line() for status in statuses),
    ]
    missing = [s.asset.name for s in statuses if not s.present]
    lines.append(f"{len(statuses) - len(missing)} of {len(statuses)} present")
    if missing:
        lines.append(f"missing: {', '.join(missing)}; fetch with:\n  {plan.fetch_command}")
    return "\n".join(lines)


def _row(status: AssetStatus) -> dict:
    return {
        "asset": status.asset.name,
        "kind": status.asset.kind,
        "status": "present" if status.present else "missing",
        "fetched": status.fetched,
        "bytes": status.size,
        "path": str(status.path or status.asset.path),
        "source": status.asset.source,
        "sha256": status.sha256 or status.asset.sha256 or "",
        "problem": status.problem or "",
    }


@task(name="fetch-asset", task_run_name="{asset.name}", cache_policy=NO_CACHE)
def fetch_asset_task(asset: Asset, settings: AssetSettings) -> AssetStatus:
    """One asset: skipped when present, else fetched and verified (see tasks.assets)."""
    logger = get_run_logger()
    with shown_in_ui("tasks.assets"):
        status = resolve_asset(asset, settings)
    if status.present:
        verb = "fetched" if status.fetched else "already present"
        logger.info("%s %s at %s", asset.name, verb, status.path)
    else:
        logger.error("%s missing: %s", asset.name, status.problem)
    return status


@flow(name="fetch-assets", log_prints=True)
def fetch_assets_flow(
    profile: str = "paper",
    models: list[str] | None = None,
    dataset: str | None = None,
    categories: list[str] | None = None,
    data_root: str | None = None,
    dest: str | None = None,
    overrides: dict | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> list[dict]:
    """Fetch every asset `profile` needs for `models` (and `dataset`); fail the run,
    naming each one, when any could not be had."""
    plan = plan_fetch(profile, models, dataset, categories, data_root, dest, overrides, timeout_s)
    progress = create_progress_artifact(
        0.0, description=f"assets fetched for profile {profile} ({len(plan.needs)} in all)"
    )
    statuses = []
    for done, asset in enumerate(plan.assets, start=1):
        statuses.append(fetch_asset_task(asset, plan.settings))
        update_progress_artifact(progress, 100.0 * done / len(plan.assets))
    create_table_artifact(
        [_row(s) for s in statuses],
        key="fetch-assets",
        description=f"assets of profile {profile}, models "
        f"{', '.join(DEFAULT_MODELS if models is None else models) or 'none'}",
    )
    print(listing(plan, statuses))
    missing = [s for s in statuses if not s.present]
    if missing:
        raise MissingAssetsError(missing, plan.fetch_command, plan.settings.download)
    return [_row(s) for s in statuses]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.fetch_assets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="paper")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated model names; 'none' for a dataset alone",
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=None)
    parser.add_argument("--categories", default=None, help="comma-separated; default: all")
    parser.add_argument(
        "--data-root", default=None, help="dataset root (default: <DIR>/datasets/...)"
    )
    parser.add_argument(
        "--dest",
        default=None,
        help="cache folder for every asset (default: $ANOMALY_BENCHMARK_ASSETS_DIR, else the "
        "libraries' own caches)",
    )
    parser.add_argument("--overrides", default=None, help="JSON of profile overrides")
    parser.add_argument(
        "--timeout-s", type=float, default=FETCH_TIMEOUT_S, help="seconds a source has to answer"
    )
    parser.add_argument(
        "--check", action="store_true", help="list present/missing assets; no network"
    )
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "none"]
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    overrides = json.loads(args.overrides) if args.overrides else None
    try:
        plan = plan_fetch(
            args.profile, models, args.dataset, categories, args.data_root, args.dest, overrides,
            args.timeout_s,
        )  # fmt: skip
    except ValueError as err:  # an unknown model, profile setting or category
        print(err, file=sys.stderr)
        return 2
    if args.check:
        statuses = check_assets(plan.assets)
        print(listing(plan, statuses))
        return 0 if all(s.present for s in statuses) else 1
    state = fetch_assets_flow(
        profile=args.profile,
        models=models,
        dataset=args.dataset,
        categories=categories,
        data_root=args.data_root,
        dest=args.dest,
        overrides=overrides,
        timeout_s=args.timeout_s,
        return_state=True,
    )
    if state.is_completed():
        return 0
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - shown to the user, exit code says it failed
        print(err, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
