"""A run's list of assets (`AssetPlan`), and the command that fetches them.

Which assets a model needs is the model's own business: its registry entry says so
(`tasks.models.entry.ModelEntry.assets`, gathered by
`tasks.models.registry.required_assets`), each as a `Need` naming the substitute its
build uses when the asset is missing and the profile allows one
(`assets.allow_fallback`). This module only merges those needs into a plan and spells
the `python -m flows.fetch_assets ...` line; it knows no model.

Example:
    >>> need = Need(timm_backbone("wide_resnet50_2", settings), "patchcore")
    >>> plan = plan_assets([need], settings, fetch_command("paper", ["patchcore"]))
    >>> [(n.asset.name, n.fallback) for n in plan.needs]
    [('wide_resnet50_2', None)]
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.assets.archives import DATASETS
from tasks.assets.base import Asset
from tasks.runtime.asset_settings import AssetSettings


@dataclass(frozen=True)
class Need:
    """An asset a run uses; `fallback` names what replaces it when missing (None: nothing
    may, the run cannot go without it)."""

    asset: Asset
    used_by: str
    fallback: str | None = None


@dataclass(frozen=True)
class AssetPlan:
    """The assets a run needs, the settings they are resolved with, and the command that
    fetches them all."""

    needs: tuple[Need, ...]
    settings: AssetSettings
    fetch_command: str

    @property
    def assets(self) -> list[Asset]:
        return [need.asset for need in self.needs]


def plan_assets(needs: Iterable[Need], settings: AssetSettings, command: str) -> AssetPlan:
    """One `Need` per asset, in first-named order; an asset two users name keeps no
    fallback when either of them has none."""
    merged: dict[str, Need] = {}
    for need in needs:
        first = merged.setdefault(need.asset.name, need)
        if first.fallback is not None and need.fallback is None:
            merged[need.asset.name] = Need(first.asset, first.used_by, None)
    return AssetPlan(needs=tuple(merged.values()), settings=settings, fetch_command=command)


def dataset_need(
    dataset: str | None,
    categories: Sequence[str] | None,
    settings: AssetSettings,
    data_root: str | Path | None = None,
) -> Need | None:
    """The dataset's asset (no substitute) when the asset layer fetches that dataset:
    `categories` of it, or all of them for None or `["all"]`."""
    if dataset not in DATASETS:
        return None
    wanted = None if not categories or [c.lower() for c in categories] == ["all"] else categories
    return Need(DATASETS[dataset](settings, data_root, wanted), "dataset")


def fetch_command(
    profile: str | None,
    models: Sequence[str],
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    settings: AssetSettings | None = None,
    overrides: dict | None = None,
    data_root: str | Path | None = None,
) -> str:
    """The `python -m flows.fetch_assets ...` line that fetches what this run needs
    (`--models none` for a dataset alone; `profile` None: the command's default)."""
    parts = ["python", "-m", "flows.fetch_assets"]
    parts += ["--profile", profile] if profile else []
    parts += ["--models", ",".join(models) or "none"]
    if dataset in DATASETS:
        parts += ["--dataset", dataset]
        if categories:
            parts += ["--categories", ",".join(categories)]
        if data_root is not None:
            parts += ["--data-root", str(data_root)]
    if overrides:
        parts += ["--overrides", json.dumps(overrides, separators=(",", ":"))]
    if settings is not None and settings.dir:
        parts += ["--dest", settings.dir]
    return shlex.join(parts)
