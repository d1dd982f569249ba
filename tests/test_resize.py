"""Every way into a model shrinks a large image the same way (`tasks.data.resize`)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from conftest import build_mvtec_layout, fit_patchcore

from tasks.data.decode import decode, load_images
from tasks.data.resize import model_resize
from tasks.inference.path_types import PathContext
from tasks.inference.paths import BUILDERS
from tasks.models.patchcore.model import build_patchcore
from tasks.models.registry import settings_for
from tasks.runtime.profiles import load_profile

SIZE = 256


@pytest.fixture(scope="module")
def fine_texture(tmp_path_factory) -> Path:
    """A 1024 px photo-like PNG with 1-px detail: what MVTec's grid and leather look like
    to a 4x downscale, and where resizes with and without antialiasing disagree most."""
    rng = np.random.default_rng(0)
    rows = np.arange(1024)[:, None]
    stripes = ((rows + np.arange(1024)[None, :]) % 3 == 0) * 120.0
    image = np.clip(stripes[..., None] + rng.normal(100, 30, (1024, 1024, 3)), 0, 255)
    path = tmp_path_factory.mktemp("resize") / "fine.png"
    cv2.imwrite(str(path), image.astype(np.uint8))
    return path


def training_input(path: Path, pre_processor) -> torch.Tensor:
    """What a model sees in training and in the stored test: anomalib's reader, then the
    model's own pre-processor (as `AnomalibModule.on_*_batch_start` applies it)."""
    return pre_processor.transform(read_image(path, as_tensor=True)[None])


def test_inference_decode_matches_the_training_resize(fine_texture):
    trained_on = model_resize(SIZE)(read_image(fine_texture, as_tensor=True)[None])[0]
    decoded = torch.from_numpy(decode(fine_texture, SIZE)).permute(2, 0, 1) / 255
    assert decoded.shape == trained_on.shape == (3, SIZE, SIZE)
    assert (decoded - trained_on).abs().max() <= 1.5 / 255  # uint8 rounding, nothing more
    assert torch.equal(load_images([fine_texture], SIZE)[0], decoded)

    # the check can fail: a resize without antialiasing of the same file is far from it
    full = read_image(fine_texture, as_tensor=True)[None]
    aliased = torch.nn.functional.interpolate(full, (SIZE, SIZE), mode="bilinear", antialias=False)
    aliased = aliased[0]
    assert (aliased - trained_on).abs().max() > 0.1


def test_patchcore_trains_tests_times_and_exports_on_the_same_pixels(fine_texture):
    quick = load_profile("quick")
    settings = settings_for("patchcore", quick).model_copy(update={"image_size": SIZE})
    model, _ = build_patchcore(settings, quick.assets)
    pre = model.pre_processor
    seen_in_training = training_input(fine_texture, pre)
    # anomalib's ONNX/OpenVINO export uses the pre-processor's exportable twin, which
    # drops antialiasing: the inference paths hand it images already at the model's size
    decoded = torch.from_numpy(decode(fine_texture, SIZE)).permute(2, 0, 1)[None] / 255
    exported = pre.export_transform(decoded)
    std = min(pre.transform.transforms[-1].std)
    assert (exported - seen_in_training).abs().max() <= 1.5 / 255 / std  # uint8 rounding
    full_size = pre.export_transform(read_image(fine_texture, as_tensor=True)[None])
    assert (full_size - seen_in_training).abs().max() > 0.1 / std  # why: it would alias
    # the timed torch paths' decode path (the one decoder, then the pre-processor)
    timed = pre.transform(load_images([fine_texture], SIZE))
    assert (timed - seen_in_training).abs().max() <= 1.5 / 255 / std  # uint8 rounding


def test_anomalib_paths_score_large_files_as_the_trained_model(tmp_path):
    """anomalib's exported pre-processor resizes without antialiasing; its paths must
    still score a file larger than the model's input as training saw it."""
    size = 64
    root = build_mvtec_layout(tmp_path / "data", n_train=6, n_test_good=3, size=4 * size)
    model = fit_patchcore(root, size, tmp_path / "engine", raw_scores=True)
    test = sorted((root / "widget" / "test").rglob("*.png"))
    train = sorted((root / "widget" / "train" / "good").glob("*.png"))
    settings = load_profile("quick").inference
    ctx = PathContext(model.eval(), size, train, tmp_path / "out", settings, "cpu", 2)

    ours = BUILDERS["torch-fp32"](ctx).score_files(test)
    theirs = BUILDERS["anomalib-torch"](ctx).score_files(test)
    assert np.allclose(theirs, ours, rtol=1e-4)  # fed the whole file: up to 72 % off
    openvino = BUILDERS["anomalib-openvino"](ctx)
    # OpenVINO's own default precision: bf16 on CPUs with AVX512-BF16 (a few % off)
    rtol = 0.1 if openvino.precision == "bf16" else 1e-3
    assert np.allclose(openvino.score_files(test), ours, rtol=rtol), openvino.precision
