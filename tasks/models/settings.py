"""What every model's settings hold, whatever the model (`ModelSettings`).

Each model folder defines a pydantic settings class on this base, with its defaults,
and the profiles' values for it (`tasks.models.entry.ModelEntry.profile_settings`).
The pipeline reads only these fields; everything else is the model's own business.
A model trained by gradient descent also has `lr`: each fresh restart multiplies it by
the profile's `retry_lr_factor`.
"""

from __future__ import annotations

from pydantic import Field

from tasks.runtime.profiles import Settings


class ModelSettings(Settings):
    image_size: int = Field(256, ge=32, description="side the images are resized to")
    train_batch_size: int = Field(8, ge=1)
