"""Files the asset-layer tests serve: a timm checkpoint in the hub's format, anomalib's
EfficientAD teacher archive and an imagenette archive, each with anomalib's layout.

The teacher archive holds real (untrained) anomalib PDNs, so a test can load the fetched
file into anomalib's teacher network as `EfficientAd.prepare_pretrained_model` does.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Served:
    data: bytes
    sha256: str


def served(data: bytes) -> Served:
    return Served(data, hashlib.sha256(data).hexdigest())


def timm_checkpoint(name: str) -> tuple[Served, dict]:
    """`model.safetensors` of timm `name` with random weights, and its state dict."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return served(save(state)), state


def teacher_archive() -> tuple[Served, dict[str, dict]]:
    """`efficientad_pretrained_weights.zip` as anomalib's release has it: one folder
    with `pretrained_teacher_small.pth` and `pretrained_teacher_medium.pth`."""
    import torch
    from anomalib.models.image.efficient_ad.torch_model import (
        MediumPatchDescriptionNetwork,
        SmallPatchDescriptionNetwork,
    )

    torch.manual_seed(0)
    states = {
        "small": SmallPatchDescriptionNetwork(out_channels=384).state_dict(),
        "medium": MediumPatchDescriptionNetwork(out_channels=384).state_dict(),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for size, state in states.items():
            member = io.BytesIO()
            torch.save(state, member)
            name = f"efficientad_pretrained_weights/pretrained_teacher_{size}.pth"
            archive.writestr(name, member.getvalue())
    return served(buffer.getvalue()), states


def imagenette_archive() -> Served:
    """`imagenette2.tgz` in imagenette's layout: imagenette2/{train,val}/<class>/*.JPEG."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for split in ("train", "val"):
            for index in range(2):
                image = io.BytesIO()
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(image, format="JPEG")
                info = tarfile.TarInfo(f"imagenette2/{split}/n01440764/{split}_{index}.JPEG")
                info.size = len(image.getvalue())
                archive.addfile(info, io.BytesIO(image.getvalue()))
    return served(buffer.getvalue())


def mvtec_archive(categories: tuple[str, ...] = ("grid",)) -> Served:
    """`mvtec_anomaly_detection.tar.xz` in MVTec AD's layout, a few tiny images per
    category: <category>/{train/good, test/good, test/crack, ground_truth/crack}."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()

    def add(archive: tarfile.TarFile, name: str, pixels: np.ndarray) -> None:
        image = io.BytesIO()
        Image.fromarray(pixels).save(image, format="PNG")
        info = tarfile.TarInfo(name)
        info.size = len(image.getvalue())
        archive.addfile(info, io.BytesIO(image.getvalue()))

    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        for category in categories:
            for index in range(3):
                noise = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                add(archive, f"{category}/train/good/{index:03d}.png", noise)
            add(archive, f"{category}/test/good/000.png", noise)
            mask = np.zeros((32, 32), dtype=np.uint8)
            mask[8:16, 8:16] = 255
            add(archive, f"{category}/test/crack/000.png", noise)
            add(archive, f"{category}/ground_truth/crack/000_mask.png", mask)
    return served(buffer.getvalue())
