"""The one downscale between an image file and a model.

Real MVTec AD images are 700 to 1024 px and the models run at 256 px. Training,
validation, test, every inference path and anomalib's own export shrink them the same
way: bilinear interpolation with half-pixel centres and **no antialiasing**. Three
different resizes of the same files gave the same EfficientAD weights on the real grid
subset a test image AUROC of 0.727 (torchvision, antialiased), 0.818 (OpenCV area) and
0.970 (bilinear, no antialiasing), so a benchmark that mixes them compares resizes, not
models. No antialiasing is the one kept because anomalib turns antialiasing off in every
ONNX and OpenVINO export, so a model deployed through anomalib sees the pixels it was
trained and scored on. (It is a choice for consistency, not for accuracy: trained and
tested this way, EfficientAD scored 0.667 on that subset.)

Example:
    >>> from tasks.resize import model_resize, resize_image
    >>> transform = model_resize(256)            # float tensors, inside the pre-processor
    >>> small = resize_image(decoded_hwc, 256)  # decoded files, before a model sees them
"""

from __future__ import annotations

import cv2
import numpy as np
from torchvision.transforms.v2 import Resize


def model_resize(image_size: int) -> Resize:
    """The pre-processor's resize: (…, H, W) float tensors -> (…, image_size, image_size)."""
    return Resize((image_size, image_size), antialias=False)


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """The same resize on a decoded HWC array (uint8 or float); on uint8 within 1/255 of it."""
    if image.shape[:2] == (image_size, image_size):
        return image
    return cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
