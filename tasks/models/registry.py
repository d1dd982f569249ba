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

To add a model: a folder `tasks/models/<name>/` with its settings class (on
`ModelSettings`), a builder `build(settings, context) -> (module, provenance)` and its
`ModelEntry` (`entry.py`), then that entry in `MODELS` below.
"""

from __future__ import annotations

from types import SimpleNamespace

from tasks.models.efficientad.entry import EFFICIENTAD
from tasks.models.entry import ModelEntry
from tasks.models.patchcore.entry import PATCHCORE
from tasks.models.settings import ModelSettings
from tasks.runtime.profiles import Profile, ProfileError

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


def settings_view(profile: Profile) -> SimpleNamespace:
    """The profile with each model's settings as an attribute (`view.patchcore.backbone`),
    for readers below the model layer, such as `tasks.assets.required_assets`."""
    return SimpleNamespace(
        name=profile.name,
        assets=getattr(profile, "assets", None),
        **{name: settings_for(name, profile) for name in MODELS},
    )
