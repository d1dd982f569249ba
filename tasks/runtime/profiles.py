"""Typed profiles: every setting in one validated place, recorded with each result.

Three profiles ship:
- `quick`: CPU-sized, minutes for the demo and the tests;
- `cpu`: a real category on 2 CPU cores;
- `paper`: anomalib's and the papers' settings, meant for a GPU; the papers' weights
  are fetched when missing, and never substituted unless `assets.allow_fallback` says so.

A profile holds the settings every model shares (seeds, attempts, spike watching,
validation, inference paths). Each model's own settings are its registry entry's
settings class (`tasks.models.registry`), with that entry's values for the profile and
the profile's overrides on top, kept here by model name in `models`: overrides may say
`{"models": {"efficientad": {"max_steps": 20}}}` or, as they always could,
`{"efficientad": {"max_steps": 20}}`.

Example:
    >>> profile = load_profile("quick", {"efficientad": {"max_steps": 20}})
    >>> profile.models["efficientad"]
    {'max_steps': 20}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.paths import REPO_ROOT


class Settings(BaseModel):
    """Frozen, refusing unknown fields (a misspelt setting is an error, not a no-op) and
    NaN or infinite numbers (NaN passes every `<=` test as false: a NaN timeout never
    runs out). Every size, count and duration also has an upper bound, so a value that
    would exhaust memory or never end is refused here, naming the field and its range."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SpikeSettings(Settings):
    """How the loss watcher decides a step is a spike (see tasks.training.loss_spikes)."""

    window: int = Field(25, ge=5, le=10_000, description="rolling window of recent steps")
    warmup_steps: int = Field(10, ge=1, le=100_000, description="steps before spikes are judged")
    robust_z: float = Field(
        8.0, gt=0, le=1_000, description="divergence: robust z-score of log-loss over this, and ..."
    )
    ratio: float = Field(
        10.0, gt=1, le=1_000_000, description="... loss over this many times the median"
    )
    min_log_spread: float = Field(
        0.05,
        gt=0,
        le=10,
        description="floor for the MAD of log-loss, so a flat curve is not hair-trigger",
    )
    watch: tuple[str, ...] = Field(
        ("train_loss",),
        description="losses judged for spikes; every logged loss is checked for NaN/inf",
    )
    persistence: int = Field(
        3,
        ge=1,
        le=1_000,
        description="divergent steps in a row that confirm a spike (NaN/inf: at once)",
    )
    shift_ratio: float = Field(
        2.0,
        gt=1,
        le=1_000_000,
        description="level shift: loss over this many times the rolling median, ...",
    )
    shift_steps: int = Field(8, ge=1, le=10_000, description="... for this many steps in a row")
    checkpoint_every: int = Field(
        5,
        ge=0,
        le=100_000,
        description="steps between rolling in-memory checkpoints; 0 = no rollback",
    )
    max_rollbacks: int = Field(
        2,
        ge=0,
        le=100,
        description="rollbacks per attempt before a fresh restart (the last resort)",
    )
    rollback_lr_factor: float = Field(
        0.5, gt=0, le=1, description="each rollback multiplies the learning rate by this"
    )
    max_extra_steps_share: float = Field(
        0.1, ge=0, le=1, description="rolled-back steps are added back, up to this share of plan"
    )

    @model_validator(mode="after")
    def _shift_below_divergence(self) -> SpikeSettings:
        if self.shift_ratio > self.ratio:
            raise ValueError(
                f"spike.shift_ratio ({self.shift_ratio}) must not exceed spike.ratio "
                f"({self.ratio}): a divergent step is first a step above the shift bar"
            )
        return self


Opacity = Annotated[float, Field(ge=0, le=1)]


class ValidationSettings(Settings):
    """Where validation data comes from; it selects among attempts and sets thresholds.

    The test split is never touched: by default a share of train/good is held out and
    each held-out image is kept as a normal one and also painted with
    `anomalies_per_image` synthetic anomalies (anomalib's Perlin generator), so 6 held-out
    images give 6 x 18 = 108 normal/anomalous pairs rather than 3 x 3."""

    split_ratio: float = Field(0.25, gt=0, lt=1, description="share of train/good held out")
    anomalies_per_image: int = Field(
        3, ge=1, le=100, description="synthetic anomalous copies painted into each held-out image"
    )
    anomaly_blend: tuple[Opacity, Opacity] = Field(
        (0.5, 1.0), description="opacity range of the painted anomalies (anomalib: 0.01-0.2)"
    )
    directory: str | None = Field(
        None,
        description="a folder with good/ and defect subfolders used instead of the synthetic split",
    )
    confidence: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="level of the validation AUROC interval; a model is retrained only when "
        "the interval's upper bound is below chance, or its scores are non-finite or constant",
    )

    @model_validator(mode="after")
    def _blend_is_a_range(self) -> ValidationSettings:
        low, high = self.anomaly_blend
        if low > high:
            raise ValueError(
                f"validation.anomaly_blend ({low}, {high}) must be (low, high), low <= high"
            )
        return self


InferencePath = Literal[
    "torch-fp32",
    "torch-bf16",
    "torch-fp16-graph",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "anomalib-torch",
    "anomalib-openvino",
]
ALL_INFERENCE_PATHS: tuple[InferencePath, ...] = InferencePath.__args__


class InferenceSettings(Settings):
    """Which inference paths are timed and scored per (model, category), and how long
    (see tasks.inference.measure). torch-fp32 is always measured: it is the AUROC reference."""

    paths: tuple[InferencePath, ...] = Field(ALL_INFERENCE_PATHS, min_length=1)
    timed_runs: int = Field(50, ge=1, le=100_000, description="batch-1 timed runs wanted per path")
    min_timed_runs: int = Field(
        5, ge=1, le=100_000, description="runs always timed, even past max_seconds_per_path"
    )
    max_seconds_per_path: float = Field(
        60.0, gt=0, le=3_600, description="cap on timed work per path; slower paths get fewer runs"
    )
    anomalib_max_seconds: float | None = Field(
        None,
        gt=0,
        le=3_600,
        description="cap on timed work for anomalib's own paths (the comparison); "
        "None = max_seconds_per_path",
    )
    warmup_runs: int = Field(3, ge=1, le=1_000, description="untimed runs first (at least one)")
    warmup_seconds: float = Field(
        5.0, ge=0, le=3_600, description="cap on warm-up after the first run"
    )
    throughput_batch: int = Field(
        8, ge=1, le=1_024, description="batch for throughput; 1 = from the batch-1 timed runs"
    )
    throughput_rounds: int = Field(4, ge=1, le=1_000, description="batches timed for throughput")
    calibration_images: int = Field(
        32, ge=1, le=10_000, description="training images that calibrate int8 (never test images)"
    )
    calibration_anomalies: int = Field(
        32,
        ge=0,
        le=10_000,
        description="anomalous validation images (synthetic anomalies painted on held-out "
        "training images, or the validation folder's defects) added to int8 calibration, so "
        "int8 ranges cover what anomalies do to activations; never test images",
    )
    threads: int | None = Field(
        None, ge=1, le=1_024, description="OpenVINO inference threads; None = torch's thread count"
    )


class Profile(Settings):
    name: str
    seed: int = Field(42, ge=0, le=2**32 - 1, description="numpy takes seeds below 2**32")
    max_attempts: int = Field(3, ge=1, le=10)
    retry_lr_factor: float = Field(0.5, gt=0, lt=1, description="each retry multiplies lr")
    spike: SpikeSettings = SpikeSettings()
    validation: ValidationSettings = ValidationSettings()
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-model setting overrides by model name; each model's settings "
        "class validates them (tasks.models.registry)",
    )
    eval_batch_size: int = Field(8, ge=1, le=1_024)
    latency_iters: int = Field(30, ge=3, le=100_000)
    latency_batch_size: int = Field(8, ge=1, le=1_024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weights_dir: str | None = Field(
        None, description="offline weights cache; None = <repo>/data/weights"
    )
    overlays: int = Field(
        2, ge=0, le=100, description="best and worst anomaly-map overlays to save"
    )
    inference: InferenceSettings = InferenceSettings()
    assets: AssetSettings = Field(
        AssetSettings(),
        description="pretrained weights and datasets: download policy, cache folder, and "
        "whether a named substitute may replace a missing one (tasks.assets)",
    )


# quick and cpu never download: a cached copy of a paper's weights is used when there
# is one, else the labelled offline substitute (EfficientNet-Lite0, a teacher distilled
# here, scikit-image photos), on a connected host too
OFFLINE_SUBSTITUTES = {"download": "never", "allow_fallback": True}

PROFILES: dict[str, dict] = {
    "quick": {
        "name": "quick",
        "latency_iters": 10,
        # The fp32 reference, OpenVINO fp32 and int8, and anomalib's two paths, on every
        # CPU: which of int8 and fp32 is the faster depends on the CPU (int8 dot-product
        # units or not), and a profile names the same paths wherever it runs. bf16 is
        # left out: only AMX runs it faster than fp32. Timed work per path is capped after
        # one warm-up run, sooner for anomalib's paths (rows record the runs), but this
        # project's paths always score the whole test split. int8 calibrates on a few
        # training images and as many validation anomalies: more anomalies cost time and
        # did not err less (docs/performance.md, profiles).
        "inference": {
            "paths": (
                "torch-fp32",
                "openvino-fp32",
                "openvino-int8",
                "anomalib-torch",
                "anomalib-openvino",
            ),
            "max_seconds_per_path": 4.0,
            "anomalib_max_seconds": 2.5,
            "warmup_runs": 1,
            "warmup_seconds": 2.0,
            "throughput_batch": 1,
            "calibration_images": 8,
            "calibration_anomalies": 8,
        },
        "assets": OFFLINE_SUBSTITUTES,
    },
    "cpu": {"name": "cpu", "latency_iters": 30, "assets": OFFLINE_SUBSTITUTES},
    # the papers' weights, fetched where the host is connected; a missing one fails the
    # run before training unless the user allows a substitute (assets.allow_fallback)
    "paper": {
        "name": "paper",
        "latency_iters": 200,
        "assets": {"download": "auto", "allow_fallback": False},
    },
}


class ProfileError(ValueError):
    """An unknown profile or settings that make no sense; the message names the field."""


def merge_settings(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` on top, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_errors(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """pydantic's errors as 'field.path: message; ...', each path under `prefix`; a
    number out of its range, NaN or infinite also says the range allowed (read from
    `model`'s fields), e.g. 'patchcore.image_size: Input should be less than or equal
    to 1024 (allowed: 32 <= image_size <= 1024)'."""
    lead = [prefix] if prefix else []
    problems = []
    for e in err.errors():
        text = f"{'.'.join(map(str, [*lead, *e['loc']]))}: {e['msg']}"
        bounds = allowed_range(model, e["loc"]) if model is not None else None
        if bounds and e["type"] in NUMBER_ERRORS:
            text += f" (allowed: {bounds})"
        problems.append(text)
    return "; ".join(problems)


NUMBER_ERRORS = {
    "finite_number", "greater_than", "greater_than_equal", "less_than", "less_than_equal",
}  # fmt: skip


def allowed_range(model: type[BaseModel], loc: tuple) -> str | None:
    """The bounds of the field at `loc` in `model`, e.g. '32 <= image_size <= 1024', or
    None when it has none (a name not found, a field without bounds)."""
    field = None
    for part in loc:
        if isinstance(part, int) or model is None:  # an item of a list: its own bounds
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        inner = field.annotation
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    if field is None:
        return None
    low = high = None
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge | annotated_types.Gt):
            low = f"{bound.ge} <=" if isinstance(bound, annotated_types.Ge) else f"{bound.gt} <"
        if isinstance(bound, annotated_types.Le | annotated_types.Lt):
            high = f"<= {bound.le}" if isinstance(bound, annotated_types.Le) else f"< {bound.lt}"
    if low is None and high is None:
        return None
    return " ".join(part for part in (low, str(loc[-1]), high) if part)


def _models_gathered(overrides: dict) -> dict:
    """Overrides with per-model settings spelled at the top level (`{"efficientad": {...}}`,
    the original spelling) moved under `models`; an explicit `models` entry wins."""
    spelled = {
        key: value
        for key, value in overrides.items()
        if key not in Profile.model_fields and isinstance(value, dict)
    }
    if not spelled:
        return overrides
    rest = {key: value for key, value in overrides.items() if key not in spelled}
    rest["models"] = merge_settings(spelled, rest.get("models") or {})
    return rest


def load_profile(name: str, overrides: dict | None = None) -> Profile:
    """Build a profile by name, with nested overrides (e.g. from flow parameters)."""
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)}")
    try:
        return Profile.model_validate(
            merge_settings(PROFILES[name], _models_gathered(overrides or {}))
        )
    except ValidationError as err:
        raise ProfileError(
            f"profile {name!r} has invalid settings: {describe_errors(err, model=Profile)}"
        ) from None


def training_device(profile: Profile) -> str:
    """Where cells train: the profile's device, or a GPU when there is one ("auto")."""
    if profile.device != "auto":
        return profile.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_dir(profile: Profile) -> Path:
    """The offline weights cache: the profile's, else <repo>/data/weights."""
    return Path(profile.weights_dir) if profile.weights_dir else REPO_ROOT / "data" / "weights"


def profile_overrides(profile: Profile) -> dict[str, Any]:
    """Each setting where `profile` differs from the stock profile of its name, by dotted
    path (`{"models.efficientad.max_steps": 24}`): what the run's overrides changed, for
    the result's notes."""
    stock = load_profile(profile.name).model_dump(mode="json")
    return dict(_changed(stock, profile.model_dump(mode="json")))


def _changed(stock: Any, actual: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(stock, dict | None) and isinstance(actual, dict | None) and stock != actual:
        stock, actual = stock or {}, actual or {}
        keys = list(dict.fromkeys([*stock, *actual]))
        return [
            pair
            for key in keys
            for pair in _changed(stock.get(key), actual.get(key), f"{path}{key}.")
        ]
    return [] if stock == actual else [(path.rstrip("."), actual)]
