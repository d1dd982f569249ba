"""The one image decoder: an image file on disk -> the pixels a model is given.

Every inference path, anomalib's two included, and the benchmark scripts decode here,
so they all score the pixels training saw: `read_rgb` gives anomalib's training reader's
RGB uint8 pixels, `decode` shrinks them as the models' pre-processors do
(`tasks.data.resize`), and `load_images` stacks them as float tensors in [0, 1].

Colour PNGs (MVTec AD's leather, tile and most of its categories) go through libspng
(`pyspng`), which decodes them faster than OpenCV's libpng; greyscale PNGs (grid) and
other formats go through OpenCV, the quicker of the two there (`benchmarks/decode_speed.py`
measures both). Asked for RGB, libspng drops transparency and keeps the high byte of
16-bit samples, as OpenCV does; for 8-bit files both give anomalib's reader's pixels.

Example:
    >>> image = decode(Path("data/demo/demo_grid/test/good/000.png"), 256)
    >>> image.shape, image.dtype
    ((256, 256, 3), dtype('uint8'))
    >>> load_images([path], 256).shape
    torch.Size([1, 3, 256, 256])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pyspng
import torch

from tasks.data.resize import resize_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREYSCALE = 0  # IHDR colour type


def read_rgb(path: Path) -> np.ndarray:
    """Image file -> RGB uint8 (H, W, 3), the pixels anomalib's training reader sees."""
    data = path.read_bytes()
    if data.startswith(PNG_SIGNATURE):
        try:
            if pyspng.header(data)["color_type"] != PNG_GREYSCALE:
                return pyspng.load(data, "RGB")
        except RuntimeError as error:  # libspng's message names the broken part
            raise ValueError(f"{path}: not a readable PNG file ({error})") from error
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError(f"{path}: not a readable image file")
    return image


def decode(path: Path, image_size: int) -> np.ndarray:
    """Image file -> RGB uint8 (image_size, image_size, 3), resized as the models are."""
    return resize_image(read_rgb(path), image_size)


def to_float(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float (N, 3, H, W) in [0, 1]."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def load_images(paths: Sequence[Path], image_size: int) -> torch.Tensor:
    """Decode and resize images as the models' pre-processors do: (N, 3, S, S) in [0, 1]."""
    return to_float([decode(Path(p), image_size) for p in paths])
