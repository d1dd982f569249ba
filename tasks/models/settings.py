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

# Upper bounds on sizes: beyond them a cell exhausts memory or never ends, late.
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 256


class ModelSettings(Settings):
    image_size: int = Field(
        256, ge=32, le=MAX_IMAGE_SIZE, description="side the images are resized to"
    )
    train_batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)
