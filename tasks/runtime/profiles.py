"""Typed training profiles: every setting in one validated place, recorded with each result.

Three profiles ship:
- `quick`: CPU-sized, minutes for the demo and the tests;
- `cpu`: a real category on 2 CPU cores, about 10 min of EfficientAD training;
- `paper`: anomalib's and the papers' settings (PatchCore: Roth et al. 2022,
  wide_resnet50_2 layer2+layer3, 10% coreset, resize 256 then crop 224; EfficientAD:
  Batzner et al. 2024, 70,000 steps at batch size 1), meant for a GPU.

Example:
    >>> profile = load_profile("quick", {"efficientad": {"max_steps": 20}})
    >>> profile.efficientad.max_steps
    20
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.runtime.hardware import cpu_has_int8_dot_products


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpikeSettings(_Settings):
    """How the loss watcher decides a step is a spike (see tasks.training.loss_spikes)."""

    window: int = Field(25, ge=5, description="rolling window of recent steps")
    warmup_steps: int = Field(10, ge=1, description="steps before spikes are judged")
    robust_z: float = Field(
        8.0, gt=0, description="divergence: robust z-score of log-loss over this, and ..."
    )
    ratio: float = Field(10.0, gt=1, description="... loss over this many times the median")
    min_log_spread: float = Field(
        0.05, gt=0, description="floor for the MAD of log-loss, so a flat curve is not hair-trigger"
    )
    watch: tuple[str, ...] = Field(
        ("train_loss",),
        description="losses judged for spikes; every logged loss is checked for NaN/inf",
    )
    persistence: int = Field(
        3, ge=1, description="divergent steps in a row that confirm a spike (NaN/inf: at once)"
    )
    shift_ratio: float = Field(
        2.0, gt=1, description="level shift: loss over this many times the rolling median, ..."
    )
    shift_steps: int = Field(8, ge=1, description="... for this many steps in a row")
    checkpoint_every: int = Field(
        5, ge=0, description="steps between rolling in-memory checkpoints; 0 = no rollback"
    )
    max_rollbacks: int = Field(
        2, ge=0, description="rollbacks per attempt before a fresh restart (the last resort)"
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


class ValidationSettings(_Settings):
    """Where validation data comes from; it selects among attempts and sets thresholds.

    The test split is never touched: by default a share of train/good is held out and
    each held-out image is kept as a normal one and also painted with
    `anomalies_per_image` synthetic anomalies (anomalib's Perlin generator), so 6 held-out
    images give 6 x 18 = 108 normal/anomalous pairs rather than 3 x 3."""

    split_ratio: float = Field(0.25, gt=0, lt=1, description="share of train/good held out")
    anomalies_per_image: int = Field(
        3, ge=1, description="synthetic anomalous copies painted into each held-out image"
    )
    anomaly_blend: tuple[float, float] = Field(
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


class PatchCoreSettings(_Settings):
    backbone: str = Field(
        "auto",
        description="timm name; 'auto' = wide_resnet50_2 when its weights are available, "
        "else the offline EfficientNet-Lite0",
    )
    layers: tuple[str, ...] | None = Field(None, description="None = the backbone's default")
    coreset_sampling_ratio: float = Field(0.1, gt=0, le=1)
    coreset_method: Literal["fast", "anomalib"] = "fast"
    num_neighbors: int = Field(9, ge=1)
    image_size: int = Field(256, ge=32)
    crop_size: int | None = Field(None, ge=32)
    train_batch_size: int = Field(8, ge=1)


class EfficientAdSettings(_Settings):
    model_size: Literal["small", "medium"] = "small"
    max_steps: int = Field(70_000, ge=1)
    train_batch_size: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    image_size: int = Field(256, ge=256, description="anomalib's autoencoder needs >= 256")
    training_precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto",
        description="Lightning precision; 'auto' = bf16-mixed on a GPU with bf16 or a CPU "
        "with AMX (about 2x faster there), else 32-true (bf16 without AMX is slower on CPU)",
    )
    teacher_weights: str | None = Field(
        None,
        description="local copy of anomalib's pretrained teacher (.pth); None = look "
        "in the cache, else the documented offline fallback",
    )
    imagenet_dir: str | None = Field(
        None, description="local imagenette copy for the penalty loss; None = fallback photos"
    )
    teacher_distill_steps: int = Field(
        5000,
        ge=1,
        description="offline fallback teacher only: distillation steps (made once, cached)",
    )


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


class InferenceSettings(_Settings):
    """Which inference paths are timed and scored per (model, category), and how long
    (see tasks.inference.measure). torch-fp32 is always measured: it is the AUROC reference."""

    paths: tuple[InferencePath, ...] = Field(ALL_INFERENCE_PATHS, min_length=1)
    timed_runs: int = Field(50, ge=1, description="batch-1 timed runs wanted per path")
    min_timed_runs: int = Field(
        5, ge=1, description="runs always timed, even past max_seconds_per_path"
    )
    max_seconds_per_path: float = Field(
        60.0, gt=0, description="cap on timed work per path; slower paths get fewer runs"
    )
    anomalib_max_seconds: float | None = Field(
        None,
        gt=0,
        description="cap on timed work for anomalib's own paths (the comparison); "
        "None = max_seconds_per_path",
    )
    warmup_runs: int = Field(3, ge=1, description="untimed runs first (at least one)")
    warmup_seconds: float = Field(5.0, ge=0, description="cap on warm-up after the first run")
    throughput_batch: int = Field(
        8, ge=1, description="batch for throughput; 1 = from the batch-1 timed runs"
    )
    throughput_rounds: int = Field(4, ge=1, description="batches timed for throughput")
    calibration_images: int = Field(
        32, ge=1, description="training images that calibrate int8 (never test images)"
    )
    calibration_anomalies: int = Field(
        32,
        ge=0,
        description="anomalous validation images (synthetic anomalies painted on held-out "
        "training images, or the validation folder's defects) added to int8 calibration, so "
        "int8 ranges cover what anomalies do to activations; never test images",
    )
    threads: int | None = Field(
        None, ge=1, description="OpenVINO inference threads; None = torch's thread count"
    )


class Profile(_Settings):
    name: str
    seed: int = 42
    max_attempts: int = Field(3, ge=1, le=10)
    retry_lr_factor: float = Field(0.5, gt=0, lt=1, description="each retry multiplies lr")
    spike: SpikeSettings = SpikeSettings()
    validation: ValidationSettings = ValidationSettings()
    patchcore: PatchCoreSettings = PatchCoreSettings()
    efficientad: EfficientAdSettings = EfficientAdSettings()
    eval_batch_size: int = Field(8, ge=1)
    latency_iters: int = Field(30, ge=3)
    latency_batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weights_dir: str | None = Field(
        None, description="offline weights cache; None = <repo>/data/weights"
    )
    overlays: int = Field(2, ge=0, description="best and worst anomaly-map overlays to save")
    inference: InferenceSettings = InferenceSettings()


def quick_inference_paths() -> tuple[InferencePath, ...]:
    """The quick profile's paths: the fp32 reference, int8 OpenVINO and anomalib's two paths;
    OpenVINO fp32 too where the CPU has no int8 dot products (VNNI or AMX).

    Without them int8 need not be the fast path: on a 2-core AMD EPYC (AVX2 only)
    PatchCore's int8 graph took 32.6 ms against OpenVINO fp32's 20.9, while EfficientAD-S's
    still ran about twice as fast as fp32.
    """
    if cpu_has_int8_dot_products():
        return ("torch-fp32", "openvino-int8", "anomalib-torch", "anomalib-openvino")
    return ("torch-fp32", "openvino-fp32", "openvino-int8", "anomalib-torch", "anomalib-openvino")


PROFILES: dict[str, dict] = {
    "quick": {
        "name": "quick",
        "patchcore": {"image_size": 256, "coreset_sampling_ratio": 0.1},
        # 36 EfficientAD-S steps per category on 2 cores (fit with validation: 64 s); a step
        # costs about 1.3 s on an AVX-512 Xeon (fp32, channels-last, the cheaper losses of
        # tasks.models.efficientad.training; bf16 where AMX), 2.5 s on an AVX2 EPYC (contiguous).
        # The demo deployment trains 24 (prefect.yaml): on the demo's synthetic categories
        # 24 and 30 steps scored as 36 did; on the real grid and leather subsets 30 scored
        # lower (0.636 / 0.727 against 0.667 / 0.773, with the earlier bf16/Adam teacher).
        # The fallback teacher is distilled only 150 steps (about 16 s), so that `make demo`
        # stays under 10 min; the `cpu` profile's 5,000-step teacher scores higher.
        "efficientad": {"max_steps": 36, "image_size": 256, "teacher_distill_steps": 150},
        "latency_iters": 10,
        # ~20-35 s per cell on 2 cores: the fp32 reference, the fast OpenVINO path and
        # anomalib's two paths; each path's timed work is capped after one warm-up run, at
        # 4 s (50 runs of int8 EfficientAD-S fit) and at 2.5 s for anomalib's paths (at
        # least 5 runs; rows record the runs), but this project's paths always score the
        # whole test split.
        # int8 is the fast path on any CPU with VNNI or AMX (quick_inference_paths adds
        # OpenVINO fp32 on CPUs without them); bf16 only with AMX
        # (without it, OpenVINO bf16 ran EfficientAD-S slower than fp32). int8 calibrates
        # on 16 images, 8 of them validation anomalies: about 0.4 s per image for EfficientAD-S;
        # 16 anomalies instead of 8 cost 3 s more per cell and erred about as much.
        "inference": {
            "paths": quick_inference_paths(),
            "max_seconds_per_path": 4.0,
            "anomalib_max_seconds": 2.5,
            "warmup_runs": 1,
            "warmup_seconds": 2.0,
            "throughput_batch": 1,
            "calibration_images": 8,
            "calibration_anomalies": 8,
        },
    },
    "cpu": {
        # A real category on 2 CPU cores: about 10 min of EfficientAD training (400 steps),
        # PatchCore as in quick. The fallback teacher is distilled 5,000 steps (about 7 min,
        # made once per machine and cached): on the real grid subset the 400 steps scored
        # 0.879 test image AUROC with it and 0.727 with a 300-step teacher; on the real
        # leather subset 36 steps scored 1.0 with it and 0.841 with a 150-step teacher.
        "name": "cpu",
        "patchcore": {"image_size": 256, "coreset_sampling_ratio": 0.1},
        "efficientad": {"max_steps": 400, "image_size": 256, "teacher_distill_steps": 5000},
        "latency_iters": 30,
    },
    "paper": {
        "name": "paper",
        "patchcore": {
            "backbone": "wide_resnet50_2",
            "layers": ("layer2", "layer3"),
            "coreset_sampling_ratio": 0.1,
            "image_size": 256,
            "crop_size": 224,
        },
        "efficientad": {"max_steps": 70_000, "train_batch_size": 1, "image_size": 256},
        "latency_iters": 200,
    },
}


class ProfileError(ValueError):
    """An unknown profile or settings that make no sense; the message names the field."""


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_profile(name: str, overrides: dict | None = None) -> Profile:
    """Build a profile by name, with nested overrides (e.g. from flow parameters)."""
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)}")
    try:
        return Profile.model_validate(_merge(PROFILES[name], overrides or {}))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ProfileError(f"profile {name!r} has invalid settings: {problems}") from None
