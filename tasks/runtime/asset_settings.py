"""Where assets are cached, when they may be downloaded, and whether a substitute may
stand in for a missing one: `AssetSettings`, the profile's `assets` (`tasks.runtime.profiles`).

It lives with the profiles (the bottom layer) so that every profile carries it; the asset
layer (`tasks.assets`) applies it. Every field is recorded with the results like the
rest of the profile.

Cache layout under one folder (the `dir` setting, else `$ANOMALY_BENCHMARK_ASSETS_DIR`):

    DIR/huggingface/hub/       timm backbones, in huggingface_hub's own cache layout
    DIR/anomalib/pre_trained/  anomalib's EfficientAD teachers
    DIR/datasets/              imagenette, MVTec AD, ...

Without either, each library's own cache is used (huggingface_hub's `HF_HUB_CACHE`,
anomalib's `pre_trained` folder), so a plain timm or anomalib run finds the same files;
datasets then go under `data/`, beside the demo data.

Example:
    >>> settings = AssetSettings(download="never", dir="/mnt/carried")
    >>> settings.hub_cache()
    PosixPath('/mnt/carried/huggingface/hub')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ASSETS_DIR_ENV = "ANOMALY_BENCHMARK_ASSETS_DIR"
DEFAULT_DATASETS_DIR = Path("data")

DownloadPolicy = Literal["auto", "never", "required"]


class AssetSettings(BaseModel):
    """Download policy and cache folder for weights and datasets (see `tasks.assets`)."""

    # as tasks.runtime.profiles.Settings: no NaN or infinite number, and bounded durations
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    download: DownloadPolicy = Field(
        "auto",
        description="'auto': fetch a missing asset when its source answers within timeout_s, "
        "else use a fallback where one is allowed; 'never': local files only; 'required': "
        "every listed asset must be had, fallbacks are refused",
    )
    allow_fallback: bool = Field(
        False,
        description="a missing asset may be replaced by the model's named substitute (e.g. "
        "the offline EfficientNet-Lite0); the result is then labelled a fallback, never the "
        "paper's configuration. False: the run fails before training, naming the asset",
    )
    dir: str | None = Field(
        None,
        description=f"one cache folder for every asset; None = ${ASSETS_DIR_ENV}, "
        "else the libraries' own caches",
    )
    timeout_s: float = Field(
        5.0, gt=0, le=600, description="probe: seconds to connect to a source and get its answer"
    )
    stall_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="anomalib downloads: give up when no data arrives for this long",
    )
    lock_timeout_s: float = Field(
        3600.0,
        gt=0,
        le=86_400,
        description="how long a worker waits for another one fetching the same asset",
    )

    @property
    def fallback_allowed(self) -> bool:
        """A missing asset may be replaced by its substitute ('required' refuses every one)."""
        return self.allow_fallback and self.download != "required"

    def root(self) -> Path | None:
        """The shared cache folder (absolute), or None for the libraries' own caches."""
        chosen = self.dir or os.environ.get(ASSETS_DIR_ENV) or None
        return Path(chosen).expanduser().absolute() if chosen else None

    def hub_cache(self) -> Path:
        """huggingface_hub cache that timm backbones go to."""
        root = self.root()
        if root is not None:
            return root / "huggingface" / "hub"
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def anomalib_weights_dir(self) -> Path:
        """anomalib's `pre_trained` folder (its `get_pretrained_weights_dir()` by default)."""
        root = self.root()
        if root is not None:
            return root / "anomalib" / "pre_trained"
        from anomalib.utils.path import get_pretrained_weights_dir

        return get_pretrained_weights_dir()

    def datasets_dir(self) -> Path:
        """Folder that datasets are extracted under."""
        root = self.root()
        return root / "datasets" if root is not None else DEFAULT_DATASETS_DIR.absolute()
