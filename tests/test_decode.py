"""`tasks.data.decode.read_rgb`: every inference path's decoder gives the pixels training saw."""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from anomalib.data.utils import read_image
from PIL import Image

from tasks.data import decode as decoder
from tasks.data.decode import read_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (48, 64, 3), np.uint8)
RGB[:8, :8] = (10, 20, 30)  # the transparent colour of the colour-key cases
GREY = RGB[..., 0].copy()
ALPHA = RNG.integers(0, 256, GREY.shape, np.uint8)
MASK = ((GREY > 100) * 255).astype(np.uint8)  # a palette image's fully transparent pixels


def save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, "PNG", **options)
    return path


def trained_on(path: Path) -> np.ndarray:
    """anomalib's reader, as training and the stored test use it, as uint8."""
    return (read_image(path, as_tensor=False) * 255).round().astype(np.uint8)


COLOUR = {
    "rgb": (Image.fromarray(RGB), {}),
    "palette": (Image.fromarray(RGB).convert("P"), {}),
    "rgba": (Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA"), {}),
    "grey-alpha": (Image.fromarray(np.dstack([GREY, ALPHA]), "LA"), {}),
    "rgb-colour-key": (Image.fromarray(RGB), {"transparency": (10, 20, 30)}),
    "palette-alpha": (Image.fromarray(np.dstack([RGB, MASK]), "RGBA").convert("P"), {}),
}
GREYSCALE = {
    "grey": (Image.fromarray(GREY), {}),
    "bilevel": (Image.fromarray(GREY > 128), {}),
    "grey-colour-key": (Image.fromarray(GREY), {"transparency": 10}),
}


def test_colour_pngs_decode_through_libspng_to_the_training_pixels(tmp_path, monkeypatch):
    paths = {name: save(tmp_path / f"{name}.png", im, **kw) for name, (im, kw) in COLOUR.items()}
    expected = {name: trained_on(path) for name, path in paths.items()}

    def no_opencv(*args, **kwargs):
        raise AssertionError("a colour PNG went through OpenCV")

    monkeypatch.setattr(decoder.cv2, "imdecode", no_opencv)
    for name, path in paths.items():
        decoded = read_rgb(path)
        assert decoded.dtype == np.uint8 and decoded.shape == (48, 64, 3), name
        # transparency is dropped, as training drops it, not blended into the colours
        assert np.array_equal(decoded, expected[name]), name


def test_greyscale_pngs_and_other_formats_decode_through_opencv(tmp_path, monkeypatch):
    def no_libspng(*args, **kwargs):
        raise AssertionError("a greyscale PNG went through libspng, the slower on grey")

    monkeypatch.setattr(decoder.pyspng, "load", no_libspng)
    for name, (image, options) in GREYSCALE.items():
        path = save(tmp_path / f"{name}.png", image, **options)
        assert np.array_equal(read_rgb(path), trained_on(path)), name
    bmp = tmp_path / "photo.bmp"
    cv2.imwrite(str(bmp), RGB[..., ::-1])
    assert np.array_equal(read_rgb(bmp), RGB)


@pytest.mark.parametrize("shape", [RGB.shape, GREY.shape], ids=["colour", "grey"])
def test_16_bit_pngs_keep_their_high_byte(tmp_path, shape):
    deep = RNG.integers(0, 65536, shape, np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), deep[..., ::-1] if deep.ndim == 3 else deep)
    high = (deep >> 8).astype(np.uint8)
    assert np.array_equal(read_rgb(path), high if high.ndim == 3 else np.dstack([high] * 3))


def test_broken_files_are_refused_with_their_name(tmp_path):
    whole = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (256, 256, 3), np.uint8)).save(whole, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.png: not a readable PNG file"):
        read_rgb(truncated)
    for name, content in (("header.png", whole.getvalue()[:12]), ("notes.png", b"not an image")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}: not a readable"):
            read_rgb(tmp_path / name)
