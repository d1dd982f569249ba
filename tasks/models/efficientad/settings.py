"""EfficientAD's settings and the profiles' values for them.

The `paper` profile is the paper's setup (Batzner et al. 2024): 70,000 steps at batch
size 1, in fp32. `quick` and `cpu` shorten training so that a category fits the demo or a CPU,
and distil the offline fallback teacher for fewer steps; the recorded settings say so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.models.settings import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, ModelSettings


class EfficientAdSettings(ModelSettings):
    model_size: Literal["small", "medium"] = "small"
    max_steps: int = Field(70_000, ge=1, le=1_000_000)
    train_batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    lr: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(1e-5, ge=0, le=1)
    image_size: int = Field(
        256, ge=256, le=MAX_IMAGE_SIZE, description="anomalib's autoencoder needs >= 256"
    )
    training_precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto",
        description="Lightning precision; 'auto' = bf16-mixed on a GPU with bf16 or a CPU "
        "with AMX (faster there), else 32-true (bf16 without AMX is slower on a CPU)",
    )
    teacher_weights: str | None = Field(
        None,
        description="local copy of anomalib's pretrained teacher (.pth); None = anomalib's "
        "from the asset layer (a teacher distilled here where assets.allow_fallback allows)",
    )
    imagenet_dir: str | None = Field(
        None,
        description="local imagenette copy for the penalty loss; None = imagenette from the "
        "asset layer (scikit-image photos where assets.allow_fallback allows)",
    )
    teacher_distill_steps: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="substitute teacher only: distillation steps (made once per run, cached)",
    )


PROFILE_SETTINGS: dict[str, dict] = {
    # A few dozen steps per category keep the demo and the tests in minutes on 2 cores;
    # the demo deployment trains fewer still (prefect.yaml), which scored as many did on
    # the demo's synthetic categories but not on real ones. The fallback teacher is
    # distilled only briefly so that `make demo` stays short; the `cpu` profile's longer
    # distillation scores higher (docs/performance.md, profiles).
    "quick": {"max_steps": 36, "image_size": 256, "teacher_distill_steps": 150},
    # a real category on 2 CPU cores: minutes of training, a teacher distilled once per
    # machine and cached
    "cpu": {"max_steps": 400, "image_size": 256, "teacher_distill_steps": 5000},
    # the paper trains in fp32 ('auto' would pick bf16 on a GPU that has it)
    "paper": {
        "max_steps": 70_000,
        "train_batch_size": 1,
        "image_size": 256,
        "training_precision": "32-true",
    },
}
