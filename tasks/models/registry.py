"""The model registry: every model the benchmark trains, one entry each.

An entry is all the rest of the pipeline may know of a model: its name, how it is
built, whether it trains by gradient descent, its settings per profile, the weights
files its build may read, and how its exported inference paths differ from its torch
ones. No module outside `tasks/models/` branches on a model's name: the training
stage, the inference paths, the cache key and the report look the entry up.

A profile's per-model settings are the entry's settings class, with the entry's
values for that profile (`profile_settings`) and then the user's overrides
(`profile.models[name]`, or the original spelling `{"efficientad": {...}}`) on top:

    >>> settings_for("efficientad", load_profile("quick", {"efficientad": {"max_steps": 20}}))
    EfficientAdSettings(model_size='small', max_steps=20, ...)

The external assets a run needs (pretrained weights, penalty data, the dataset) are
each entry's to say (`ModelEntry.assets`); `required_assets` gathers them for the
benchmark's pre-flight check and for `flows.fetch_assets`:

    >>> plan = required_assets(load_profile("paper"), ["patchcore", "efficientad"])
    >>> [(n.asset.name, n.fallback) for n in plan.needs]
    [('wide_resnet50_2', None), ('efficientad-teacher', None), ('imagenette', None)]

To add a model: a folder `tasks/models/<name>/` with its settings class (on
`ModelSettings`), a builder `build(settings, context) -> (module, provenance)`, the
assets it needs (`assets(settings, asset_settings) -> [Need]`) and its `ModelEntry`
(`entry.py`), then that entry in `MODELS` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tasks.assets import AssetPlan, Need, dataset_need, fetch_command, plan_assets
from tasks.data.datasets import dataset_to_fetch
from tasks.models.efficientad.entry import EFFICIENTAD
from tasks.models.entry import BuildContext, ModelEntry
from tasks.models.patchcore.entry import PATCHCORE
from tasks.models.settings import ModelSettings
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.profiles import Profile, ProfileError, training_device, weights_dir

MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in (PATCHCORE, EFFICIENTAD)}


class UnknownModel(ValueError):
    """A model name no entry has; the message lists the names accepted."""


def names() -> tuple[str, ...]:
    return tuple(MODELS)


def get(name: str) -> ModelEntry:
    """The entry of `name` (any case), else `UnknownModel` listing the accepted names."""
    entry = MODELS.get(name.lower())
    if entry is None:
        raise UnknownModel(f"unknown model {name!r}: choose one of {names()}")
    return entry


def settings_for(name: str, profile: Profile) -> ModelSettings:
    """Model `name`'s settings in `profile` (see `ModelEntry.settings_for`)."""
    return get(name).settings_for(profile)


def check_models(models: list[str], profile: Profile) -> None:
    """Refuse, before anything runs, unknown model names (asked for, or named in the
    profile's overrides) and invalid settings of the models asked for."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise UnknownModel(f"unknown models {unknown}: choose from {list(MODELS)}")
    stray = sorted(set(profile.models) - set(MODELS))
    if stray:
        raise ProfileError(
            f"profile {profile.name!r} has settings for {stray}, which are neither models "
            f"({list(MODELS)}) nor profile settings ({sorted(Profile.model_fields)})"
        )
    for name in models:
        settings_for(name, profile)


def fetch_command_for(profile: Profile, models: Sequence[str]) -> str:
    """The `python -m flows.fetch_assets ...` line that fetches what `models` need under
    `profile`, with their settings overrides (a named backbone, a local teacher)."""
    overrides = {name: profile.models[name] for name in models if profile.models.get(name)}
    return fetch_command(
        profile.name,
        list(models),
        settings=profile.assets,
        overrides={"models": overrides} if overrides else None,
    )


def build_context(name: str, profile: Profile) -> BuildContext:
    """What model `name`'s build and preparation are given under `profile`, here."""
    return BuildContext(
        weights_dir=weights_dir(profile),
        device=training_device(profile),
        assets=profile.assets,
        fetch_command=fetch_command_for(profile, [get(name).name]),
    )


def required_assets(
    profile: Profile,
    models: Sequence[str],
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    *,
    data_root: str | Path | None = None,
    overrides: dict | None = None,
    settings: AssetSettings | None = None,
    whole_dataset: bool = False,
) -> AssetPlan:
    """Every asset a run of `models` under `profile` needs, as their entries say (each
    with its substitute, where `assets.allow_fallback` allows one), then the dataset's
    when the asset layer fetches that kind (MVTec AD), resolved against `settings`
    (default: `profile.assets`). The dataset counts only when a wanted category folder is
    absent, unless `whole_dataset` (fetching ahead). `overrides`, the run's, go into the
    fetch command."""
    settings = settings or profile.assets
    names = list(dict.fromkeys(get(name).name for name in models))
    needs: list[Need] = [
        need
        for name in names
        for need in MODELS[name].assets(settings_for(name, profile), settings)
    ]
    if whole_dataset:
        wanted = dataset_need(dataset, categories, settings, data_root)
    else:
        asset = dataset_to_fetch(dataset, data_root, categories, settings)
        wanted = Need(asset, "dataset") if asset is not None else None
    if wanted is not None:
        needs.append(wanted)
    command = fetch_command(
        profile.name, names, dataset, categories, settings, overrides, data_root
    )
    return plan_assets(needs, settings, command)


def preparing(models: Sequence[str]) -> list[str]:
    """Those of `models` whose entry prepares something once per run."""
    return [get(name).name for name in models if get(name).prepare is not None]


def prepare(name: str, profile: Profile) -> None:
    """Model `name`'s once-per-run preparation under `profile`, here (see
    `ModelEntry.prepare`); nothing for a model without one."""
    entry = get(name)
    if entry.prepare is not None:
        entry.prepare(settings_for(name, profile), build_context(name, profile))
