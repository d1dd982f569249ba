"""EfficientAD without the network: its substitute teacher and penalty photos where
allowed, a local teacher, clear refusals, and a real anomalib fit."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from anomalib.data import MVTecAD
from anomalib.models.image.efficient_ad import lightning_model as anomalib_efficientad
from conftest import cpu_engine
from PIL import Image

from tasks.assets import MissingAssetsError
from tasks.data.decode import load_images
from tasks.models.efficientad import teacher as efficientad_teacher
from tasks.models.efficientad.model import OfflineAssetError, build_efficientad
from tasks.models.efficientad.scoring import efficientad_inference
from tasks.models.registry import settings_for
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.profiles import load_profile

IMAGE_SIZE = 256  # anomalib's EfficientAD autoencoder needs at least 256 px
CROP = 128  # images on disk; the pre-processor resizes them


# the quick profile's assets: local files only, substitutes allowed; in an empty folder
OFFLINE = {"download": "never", "allow_fallback": True}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any download or socket connection fails the test; the asset cache is empty."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(anomalib_efficientad, "download_and_extract", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def assets(tmp_path: Path) -> AssetSettings:
    return AssetSettings(**OFFLINE, dir=str(tmp_path / "assets"))


@pytest.fixture
def brick_dataset(tmp_path: Path) -> Path:
    """A tiny MVTec-layout category from scikit-image's brick photo, with painted scratches."""
    brick = skimage.data.brick()
    root = tmp_path / "data"
    category = root / "brick"
    rng = np.random.default_rng(0)

    def save(image: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)

    for index in range(14):
        top, left = rng.integers(0, brick.shape[0] - CROP, size=2)
        crop = np.repeat(brick[top : top + CROP, left : left + CROP, None], 3, axis=2)
        if index < 8:
            save(crop, category / "train" / "good" / f"{index:03d}.png")
        elif index < 11:
            save(crop, category / "test" / "good" / f"{index:03d}.png")
        else:
            mask = np.zeros(crop.shape[:2], dtype=np.uint8)
            mask[40:88, 60:66] = 255
            crop[mask > 0] = 0
            save(crop, category / "test" / "scratch" / f"{index:03d}.png")
            save(mask, category / "ground_truth" / "scratch" / f"{index:03d}_mask.png")
    return root


def quick_settings(**overrides):
    efficientad = {"image_size": IMAGE_SIZE, "max_steps": 3, "teacher_distill_steps": 12}
    return settings_for(
        "efficientad", load_profile("quick", {"efficientad": efficientad | overrides})
    )


def fit(model, root: Path, tmp_path: Path, validate: bool = False) -> None:
    datamodule = MVTecAD(
        root=root, category="brick", train_batch_size=1, eval_batch_size=4, num_workers=0
    )
    engine = cpu_engine(tmp_path / "engine", max_steps=3)
    engine.fit(model, datamodule=datamodule)
    if validate:  # as tasks.training.coordinator validates each attempt
        engine.validate(model, datamodule=datamodule, verbose=False)


@pytest.mark.slow
def test_fallback_teacher_is_distilled_cached_and_trains_offline(
    brick_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assets
) -> None:
    cache = tmp_path / "cache"
    model, provenance = build_efficientad(quick_settings(), cache, assets, visualizer=False)

    assert provenance["source"] == "fallback"
    assert provenance["teacher_source"] == provenance["penalty_data_source"] == "fallback"
    assert provenance["paper_configuration"] is False
    assert provenance["teacher"].startswith("fallback: distilled from EfficientNet-Lite0")
    assert provenance["penalty_data"].startswith("fallback: scikit-image natural photos")
    # trained, tested and exported on the same pixels (tasks.data.resize)
    large = torch.rand(1, 3, 3 * IMAGE_SIZE, 3 * IMAGE_SIZE)
    pre = model.pre_processor
    small = pre.transform(large)  # antialiased; the export's resize is not, and is fed
    assert torch.equal(pre.export_transform(small), small)  # images already at its size
    (distilled_file,) = cache.glob("teacher_small_lite0_distilled_steps12_seed0_*.pth")
    distilled = torch.load(distilled_file, weights_only=True)
    torch.manual_seed(0)
    untrained = efficientad_teacher.new_pdn("small").state_dict()
    assert not torch.equal(distilled["conv4.weight"], untrained["conv4.weight"])

    fit(model, brick_dataset, tmp_path, validate=True)

    # validation set the map quantiles (in inference mode) as ordinary tensors: anomalib's
    # ONNX export (torch.export, non-strict) fails on inference tensors
    assert all(q.item() != 0 for q in model.model.quantiles.values())
    assert [n for n, p in model.named_parameters() if p.is_inference()] == []
    teacher = model.model.teacher.state_dict()
    assert all(torch.equal(teacher[name], distilled[name]) for name in distilled)
    assert Path(model.imagenet_loader.dataset.root) == cache / "penalty_photos"
    images = load_images(sorted((brick_dataset / "brick" / "test").rglob("*.png")), IMAGE_SIZE)
    scores = efficientad_inference(model, "fp32")(images).pred_score
    assert scores.shape == (len(images),) and torch.isfinite(scores).all()

    # a second build reuses the cached teacher instead of distilling again
    monkeypatch.setattr(efficientad_teacher, "distill_teacher", pytest.fail)
    _, again = build_efficientad(quick_settings(), cache, assets)
    assert again["teacher"] == provenance["teacher"]


def test_distillation_lowers_the_loss() -> None:
    _, stats = efficientad_teacher.distill_teacher("small", steps=12, seed=0)
    assert stats["last_loss"] < stats["first_loss"]


def test_negligible_teacher_weights_are_zeroed_when_loaded(tmp_path: Path) -> None:
    # weight decay leaves dead channels' weights subnormal, which CPUs compute slowly
    torch.manual_seed(0)
    state = efficientad_teacher.new_pdn("small").state_dict()
    weights = state["conv3.weight"].view(-1)
    weights[:4] = torch.tensor([1e-39, -1e-30, 1e-21, 1e-6])  # subnormal, two tiny, one small
    path = tmp_path / "teacher.pth"
    torch.save(state, path)

    loaded = efficientad_teacher.load_teacher_state(path, efficientad_teacher.new_pdn("small"))

    kept = loaded["conv3.weight"].view(-1)
    assert kept[:3].eq(0).all()
    assert torch.equal(kept[3:], weights[3:])
    assert all(torch.equal(loaded[name], state[name]) for name in state if name != "conv3.weight")


@pytest.mark.slow
def test_configured_local_teacher_is_used(
    brick_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assets
) -> None:
    torch.manual_seed(123)
    local = efficientad_teacher.new_pdn("small").state_dict()
    teacher_file = tmp_path / "pretrained_teacher_small.pth"
    torch.save(local, teacher_file)
    monkeypatch.setattr(efficientad_teacher, "distill_teacher", pytest.fail)

    model, provenance = build_efficientad(
        quick_settings(teacher_weights=str(teacher_file)),
        tmp_path / "cache",
        assets,
        visualizer=False,
    )
    fit(model, brick_dataset, tmp_path)

    # a real teacher with the substitute penalty photos is not "pretrained weights"
    assert provenance["source"] == "fallback" and provenance["penalty_data_source"] == "fallback"
    assert provenance["teacher"] == f"anomalib pretrained (local copy {teacher_file})"
    assert provenance["teacher_source"] == "local"
    assert provenance["teacher_sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    teacher = model.model.teacher.state_dict()
    assert all(torch.equal(teacher[name], local[name]) for name in local)


def test_teacher_in_the_asset_cache_is_found(tmp_path: Path, monkeypatch, assets) -> None:
    folder = assets.anomalib_weights_dir() / "efficientad_pretrained_weights"
    folder.mkdir(parents=True)
    for size in ("small", "medium"):
        torch.save(
            efficientad_teacher.new_pdn(size).state_dict(),
            folder / f"pretrained_teacher_{size}.pth",
        )
    monkeypatch.setattr(efficientad_teacher, "distill_teacher", pytest.fail)
    refused = assets.model_copy(update={"allow_fallback": False})
    _, provenance = build_efficientad(
        quick_settings(imagenet_dir=str(_photo_folder(tmp_path))), tmp_path, refused
    )
    assert provenance["teacher_source"] == "anomalib" and provenance["source"] == "pretrained"
    assert str(folder / "pretrained_teacher_small.pth") in provenance["teacher"]
    # copied there by hand, not verified by the asset layer: said so, with anomalib's hash
    assert provenance["teacher_sha256"].startswith("not recorded (unverified copy")


def test_missing_teacher_without_fallback_is_a_clear_error(tmp_path: Path, assets) -> None:
    refused = assets.model_copy(update={"allow_fallback": False})
    with pytest.raises(MissingAssetsError) as missing:
        build_efficientad(quick_settings(), tmp_path, refused, fetch_command="FETCH-IT")
    message = str(missing.value)
    assert "2 assets needed by this run are missing" in message
    assert "efficientad-teacher" in message and "imagenette" in message
    assert str(assets.anomalib_weights_dir() / "efficientad_pretrained_weights") in message
    assert "FETCH-IT" in message
    assert not list(tmp_path.glob("teacher_*_distilled_*"))  # no substitute made
    with pytest.raises(OfflineAssetError, match="teacher_weights"):
        build_efficientad(
            quick_settings(teacher_weights=str(tmp_path / "nope.pth")), tmp_path, assets
        )
    with pytest.raises(OfflineAssetError, match="imagenet_dir"):
        build_efficientad(quick_settings(imagenet_dir=str(tmp_path / "nope")), tmp_path, assets)


def test_teacher_of_the_wrong_size_is_refused(tmp_path: Path, assets) -> None:
    medium_file = tmp_path / "medium.pth"
    torch.save(efficientad_teacher.new_pdn("medium").state_dict(), medium_file)
    with pytest.raises(ValueError, match="not a teacher of this EfficientAD size"):
        build_efficientad(quick_settings(teacher_weights=str(medium_file)), tmp_path, assets)


@pytest.mark.slow
def test_bf16_and_openvino_scores_follow_fp32(tmp_path: Path, assets) -> None:
    torch.manual_seed(0)
    model, _ = build_efficientad(
        quick_settings(teacher_weights=str(_saved_random_teacher(tmp_path))), tmp_path, assets
    )
    model.model.mean_std.update(
        {"mean": torch.zeros(1, 384, 1, 1), "std": torch.ones(1, 384, 1, 1)}
    )
    images = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    reference = efficientad_inference(model, "fp32")(images)
    bf16 = efficientad_inference(model, "bf16")(images)
    assert bf16.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(bf16.pred_score, reference.pred_score, rtol=0.05, atol=0)

    pytest.importorskip("openvino", reason="openvino is not installed (optional fast path)")
    openvino = efficientad_inference(model, "openvino-fp32", image_size=IMAGE_SIZE)(images)
    torch.testing.assert_close(openvino.pred_score, reference.pred_score, rtol=1e-3, atol=1e-4)
    assert openvino.anomaly_map.shape == reference.anomaly_map.shape


def _saved_random_teacher(tmp_path: Path) -> Path:
    path = tmp_path / "random_teacher.pth"
    torch.save(efficientad_teacher.new_pdn("small").state_dict(), path)
    return path


def _photo_folder(tmp_path: Path) -> Path:
    """A one-class ImageFolder standing in for a local imagenette copy."""
    root = tmp_path / "photos"
    (root / "n01440764").mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(root / "n01440764" / "a.png")
    return root
