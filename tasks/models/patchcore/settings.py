"""PatchCore's settings and the profiles' values for them.

The `paper` profile is the paper's setup (Roth et al. 2022): wide_resnet50_2
layer2+layer3, a 10 % coreset, resize 256 then centre-crop 224.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.models.settings import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, ModelSettings


class PatchCoreSettings(ModelSettings):
    backbone: str = Field(
        "auto",
        description="timm name (its ImageNet weights come from the asset layer); 'auto' = "
        "the paper's wide_resnet50_2. Where they cannot be had and assets.allow_fallback "
        "is set, the offline EfficientNet-Lite0 stands in, labelled a fallback",
    )
    layers: tuple[str, ...] | None = Field(None, description="None = the backbone's default")
    coreset_sampling_ratio: float = Field(0.1, gt=0, le=1)
    coreset_method: Literal["fast", "anomalib"] = "fast"
    num_neighbors: int = Field(9, ge=1, le=100, description="nearest patches scored (anomalib: 9)")
    image_size: int = Field(256, ge=32, le=MAX_IMAGE_SIZE)
    crop_size: int | None = Field(None, ge=32, le=MAX_IMAGE_SIZE)
    train_batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)

    @model_validator(mode="after")
    def _crop_inside_image(self) -> PatchCoreSettings:
        if self.crop_size is not None and self.crop_size > self.image_size:
            raise ValueError(
                f"crop_size ({self.crop_size}) must not exceed image_size ({self.image_size})"
            )
        return self


PROFILE_SETTINGS: dict[str, dict] = {
    "quick": {"image_size": 256, "coreset_sampling_ratio": 0.1},
    "cpu": {"image_size": 256, "coreset_sampling_ratio": 0.1},
    "paper": {
        "backbone": "wide_resnet50_2",
        "layers": ("layer2", "layer3"),
        "coreset_sampling_ratio": 0.1,
        "image_size": 256,
        "crop_size": 224,
    },
}
