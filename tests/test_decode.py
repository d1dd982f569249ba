"""`tasks.inference.read_rgb`: every inference path's decoder gives the pixels training saw."""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from anomalib.data.utils import read_image
from PIL import Image

from tasks import inference
from tasks.inference import read_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (48, 64, 3), np.uint8)
RGB[:8, :8] = (10, 20, 30)  # the transparent colour of the colour-key cases
GREY = RGB[..., 0].copy()


def save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, "PNG", **options)
    return path


def trained_on(path: Path) -> np.ndarray:
    """anomalib's reader, as training and the stored test use it."""
    return read_image(path, as_tensor=False)


def test_opaque_pngs_decode_without_opencv_to_the_training_pixels(tmp_path, monkeypatch):
    cases = {
        "rgb": Image.fromarray(RGB),
        "grey": Image.fromarray(GREY),
        "palette": Image.fromarray(RGB).convert("P"),
        "bilevel": Image.fromarray(GREY > 128),
    }
    paths = {name: save(tmp_path / f"{name}.png", image) for name, image in cases.items()}
    expected = {name: trained_on(path) for name, path in paths.items()}

    def no_opencv(*args, **kwargs):
        raise AssertionError("an opaque PNG went through OpenCV")

    monkeypatch.setattr(inference.cv2, "imdecode", no_opencv)
    for name, path in paths.items():
        decoded = read_rgb(path)
        assert decoded.dtype == np.uint8 and decoded.shape == (48, 64, 3), name
        assert np.array_equal(decoded, (expected[name] * 255).round().astype(np.uint8)), name


def test_16_bit_pngs_keep_their_high_byte_as_opencv_did(tmp_path):
    path = tmp_path / "rgb16.png"
    deep = RNG.integers(0, 65536, RGB.shape, np.uint16)
    cv2.imwrite(str(path), deep[..., ::-1])
    assert np.array_equal(read_rgb(path), (deep >> 8).astype(np.uint8))


@pytest.mark.parametrize(
    "name, image, options",
    [
        ("rgba", Image.fromarray(np.dstack([RGB, GREY]), "RGBA"), {}),
        ("grey-alpha", Image.fromarray(np.dstack([GREY, 255 - GREY]), "LA"), {}),
        ("rgb-colour-key", Image.fromarray(RGB), {"transparency": (10, 20, 30)}),
        ("grey-colour-key", Image.fromarray(GREY), {"transparency": 10}),
    ],
)
def test_transparency_is_dropped_as_training_drops_it(tmp_path, name, image, options):
    path = save(tmp_path / f"{name}.png", image, **options)
    expected = (trained_on(path) * 255).round().astype(np.uint8)
    assert np.array_equal(read_rgb(path), expected)
    # the check can fail: blending the alpha in, as a plain RGB decode by Wuffs does,
    # changes the transparent pixels
    assert not np.array_equal(inference._wuffs_png().decode(path.read_bytes()).pixbuf, expected)


def test_other_formats_decode_through_opencv(tmp_path):
    path = tmp_path / "photo.bmp"
    cv2.imwrite(str(path), RGB[..., ::-1])
    assert np.array_equal(read_rgb(path), RGB)


def test_broken_files_are_refused_with_their_name(tmp_path):
    whole = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (256, 256, 3), np.uint8)).save(whole, "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.png: not a readable PNG file"):
        read_rgb(truncated)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png: not a readable image file"):
        read_rgb(text)
