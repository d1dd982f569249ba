"""A model as the pipeline sees it: `ModelEntry`, and what its builder is given.

Each model folder defines its entry (`tasks/models/<name>/entry.py`); the registry
(`tasks.models.registry`) lists them. An entry names the model's functions, which are
imported when first called: naming a model (the flow's start, `prefect deploy`, the
report) must not pull in torch and anomalib.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tasks.inference.deployment import AS_TRAINED, Deployment
from tasks.models.settings import ModelSettings
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.profiles import Profile, ProfileError, describe_errors, merge_settings

if TYPE_CHECKING:
    from anomalib.models.components import AnomalibModule

    from tasks.assets import Need

FETCH_COMMAND = "python -m flows.fetch_assets"


@dataclass(frozen=True)
class BuildContext:
    """What a build is given besides its settings."""

    weights_dir: Path  # what this project makes and caches (profile.weights_dir)
    device: str  # where it trains: "cpu" or "cuda"
    assets: AssetSettings  # the profile's download policy, cache folder, allow_fallback
    fetch_command: str = FETCH_COMMAND  # named when an asset is missing and may not be replaced


Builder = Callable[[Any, BuildContext], "tuple[AnomalibModule, dict]"]
AssetNeeds = Callable[[Any, AssetSettings], "list[Need]"]


def _no_trainer_args(settings: Any, device: str) -> dict[str, Any]:
    del settings, device
    return {}


def _no_weight_files(settings: Any, weights_dir: Path) -> list[Path]:
    del settings, weights_dir
    return []


def _no_assets(settings: Any, assets: AssetSettings) -> list[Need]:
    del settings, assets
    return []


@dataclass(frozen=True)
class ModelEntry:
    """One model, as the pipeline sees it.

    - `build(settings, context)`: the untrained anomalib module and its provenance dict
      (weights, `source` pretrained|fallback, `paper_configuration`);
    - `gradient`: trained by gradient descent (loss spikes watched and rolled back,
      fresh restarts up to `profile.max_attempts`; its settings have `lr`), else one
      deterministic fit (one attempt);
    - `settings` and `profile_settings`: the settings class and each profile's values;
    - `trainer_args(settings, device)`: Lightning trainer arguments (steps, precision);
    - `weight_files(settings, weights_dir)`: files the build may read besides the
      weights folder and its assets, which the training cache key hashes;
    - `assets(settings, asset_settings)`: the external assets its build resolves for these
      settings (`tasks.assets.Need`: a timm backbone, a teacher, a dataset), each with
      the substitute the build uses when it is missing and `asset_settings.allow_fallback`
      allows one, else `fallback=None`. The benchmark resolves them all before
      validation and training, and `flows.fetch_assets` fetches them ahead; the build
      then finds them present (`tasks.assets.resolve_asset`, no network);
    - `prepare(settings, context)`: work done once per run before its cells, on a
      worker of the run's cluster (e.g. EfficientAD's substitute teacher, distilled on
      that worker's device into the shared weights folder); None: nothing to prepare;
    - `deployment`: how its exported inference paths differ from its torch ones."""

    name: str
    display_name: str
    settings: type[ModelSettings]
    build: Builder
    gradient: bool
    profile_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    trainer_args: Callable[[Any, str], dict[str, Any]] = _no_trainer_args
    weight_files: Callable[[Any, Path], list[Path]] = _no_weight_files
    assets: AssetNeeds = _no_assets
    prepare: Callable[[Any, BuildContext], None] | None = None
    deployment: Deployment = AS_TRAINED

    def __post_init__(self) -> None:
        if self.gradient and "lr" not in self.settings.model_fields:
            raise TypeError(f"{self.name}: a gradient-trained model's settings need `lr`")

    def settings_for(self, profile: Profile) -> ModelSettings:
        """This model's settings in `profile`: class defaults, the profile's values, then
        the profile's overrides. Bad values raise `ProfileError` naming the field."""
        values = merge_settings(
            dict(self.profile_settings.get(profile.name, {})), profile.models.get(self.name, {})
        )
        try:
            return self.settings.model_validate(values)
        except ValidationError as err:
            problems = describe_errors(err, prefix=self.name, model=self.settings)
            raise ProfileError(
                f"profile {profile.name!r} has invalid settings: {problems}"
            ) from None
