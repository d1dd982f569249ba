"""The one downscale between an image file and a model.

Real MVTec AD images are 700 to 1024 px and the models run at 256 px. Training,
validation, test, every inference path and anomalib's own paths shrink them the same
way: torchvision's bilinear resize **with antialiasing** (anomalib's default
pre-processing), on float tensors inside the pre-processor and on decoded uint8 files
before an inference path's model.

Mixing resizes makes a benchmark compare resizes instead of models: the same weights
score very differently depending on the resize at test time alone. Antialiasing is the
one kept because a 4x shrink of fine periodic textures (grid) without it aliases, and
models trained and tested without it scored lower (docs/performance.md, resize).

anomalib turns antialiasing off in its ONNX and OpenVINO exports. The inference paths
therefore hand exported graphs images already at the model's size, where the graph's
own resize does nothing, so a deployed model sees the pixels it was trained and scored on.

Example:
    >>> from tasks.data.resize import model_resize, resize_image
    >>> transform = model_resize(256)            # float tensors, inside the pre-processor
    >>> small = resize_image(decoded_hwc, 256)  # decoded files, before a model sees them
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import Resize


def model_resize(image_size: int) -> Resize:
    """The pre-processor's resize: (…, H, W) float tensors -> (…, image_size, image_size)."""
    return Resize((image_size, image_size), antialias=True)


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """The same resize on a decoded HW or HWC array, of the same dtype (uint8: within
    uint8 rounding of the float resize)."""
    if image.shape[:2] == (image_size, image_size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    chw = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor[None]
    small = model_resize(image_size)(chw)
    return (small.permute(1, 2, 0) if tensor.ndim == 3 else small[0]).contiguous().numpy()
