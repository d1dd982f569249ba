"""anomalib's `Folder` datamodule over an MVTec-layout category, validation kept apart.

The test split is the complete test folder; validation never comes from it. By default
a share of train/good is held out, and every held-out image is kept as a normal one
and painted with several synthetic anomalies (anomalib's Perlin generator,
`synthetic_validation`); or a folder the user names (`validation.directory`) is used.

Example:
    >>> datamodule, has_masks, n_test = make_datamodule(spec, "demo_grid", profile, 8)
    >>> len(validation_anomalies(datamodule))  # after setup: the painted images
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.data import Folder
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.utils import Split, ValSplitMode, read_image
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.data.utils.split import random_split
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from tasks.results.types import DatasetError, DatasetSpec
from tasks.runtime.profiles import Profile, ValidationSettings

# what anomalib's Folder globs (torchvision's list); checks.manifest_schema holds the same
IMAGE_SUFFIXES = set(IMG_EXTENSIONS)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class _FolderWithValidationDir(Folder):
    """`Folder` whose validation data is a user-named folder (good/ + defect folders)."""

    def __init__(self, validation_dir: Path, **kwargs: Any) -> None:
        super().__init__(val_split_mode=ValSplitMode.FROM_DIR, **kwargs)
        self.validation_dir = validation_dir

    def _create_val_split(self) -> None:
        defects = [d for d in sorted(self.validation_dir.iterdir()) if d.is_dir()]
        defects = [d for d in defects if d.name not in ("good", "ground_truth")]
        self.val_data = FolderDataset(
            name=f"{self.name}_validation",
            split=Split.TEST,
            normal_dir=self.validation_dir / "good",
            # FolderDataset only puts normal images into a test split from normal_test_dir.
            normal_test_dir=self.validation_dir / "good",
            abnormal_dir=defects or None,
        )


def synthetic_validation(
    normal: AnomalibDataset, settings: ValidationSettings, out_dir: Path, seed: int
) -> AnomalibDataset:
    """Every held-out normal image, plus `anomalies_per_image` copies of it painted with a
    synthetic anomaly (anomalib's `PerlinAnomalyGenerator`, Perlin-noise shapes filled
    with a perturbed copy of the image) and their masks, written under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = PerlinAnomalyGenerator(probability=1.0, blend_factor=settings.anomaly_blend)
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, source in enumerate(normal.samples.image_path):
            rows.append(
                {"image_path": source, "label": "normal", "label_index": 0, "mask_path": ""}
            )
            image = read_image(source, as_tensor=True)
            for j in range(settings.anomalies_per_image):
                painted, mask = generator(image)
                stem = f"{i:03d}_{j}"
                image_path, mask_path = out_dir / f"{stem}.png", out_dir / f"{stem}_mask.png"
                pixels = (painted.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
                Image.fromarray(pixels).save(image_path)
                binary = (mask.squeeze().numpy() > 0.5).astype(np.uint8) * 255
                Image.fromarray(binary).save(mask_path)
                rows.append(
                    {
                        "image_path": str(image_path),
                        "label": "abnormal",
                        "label_index": 1,
                        "mask_path": str(mask_path),
                    }
                )
    dataset = AnomalibDataset(augmentations=normal.augmentations)
    samples = pd.DataFrame(rows).assign(split=Split.VAL)
    samples.attrs["task"] = "segmentation"
    dataset.samples = samples
    return dataset


class _FolderWithSyntheticValidation(Folder):
    """`Folder` whose validation split is `synthetic_validation` of held-out train/good."""

    def __init__(self, settings: ValidationSettings, out_dir: Path, **kwargs: Any) -> None:
        super().__init__(
            val_split_mode=ValSplitMode.SYNTHETIC, val_split_ratio=settings.split_ratio, **kwargs
        )
        self.validation_settings = settings
        self.validation_out_dir = out_dir

    def _create_val_split(self) -> None:
        self.train_data, normal = random_split(
            self.train_data, self.validation_settings.split_ratio, seed=self.seed
        )
        self.val_data = synthetic_validation(
            normal, self.validation_settings, self.validation_out_dir, self.seed or 0
        )


def make_datamodule(
    spec: DatasetSpec,
    category: str,
    profile: Profile,
    train_batch_size: int,
    work_dir: Path | None = None,
) -> tuple[Folder, bool, int]:
    """anomalib `Folder` over an MVTec-layout category.

    Synthetic validation images go to `work_dir/validation` (a temp folder when None).
    Returns the datamodule, whether test masks are used and how many test images the
    folder holds (the test split must keep them all)."""
    root = spec.category_dir(category)
    test_dir = root / "test"
    if not (root / "train" / "good").is_dir() or not test_dir.is_dir():
        raise DatasetError(
            f"{root} is not an MVTec-layout category: expected train/good and test/ in it"
        )
    defects = [d for d in sorted(test_dir.iterdir()) if d.is_dir() and d.name != "good"]
    mask_dirs = [root / "ground_truth" / d.name for d in defects]
    has_masks = spec.masks_expected and bool(defects) and all(m.is_dir() for m in mask_dirs)
    n_test = sum(len(images_in(d)) for d in test_dir.iterdir() if d.is_dir())
    common: dict[str, Any] = {
        "name": f"{spec.kind}_{category}",
        "root": root,
        "normal_dir": root / "train" / "good",
        "abnormal_dir": defects or None,
        "normal_test_dir": test_dir / "good" if (test_dir / "good").is_dir() else None,
        "mask_dir": mask_dirs if has_masks else None,
        "train_batch_size": train_batch_size,
        "eval_batch_size": profile.eval_batch_size,
        "num_workers": 0,
        "seed": profile.seed,
    }
    if profile.validation.directory:
        datamodule: Folder = _FolderWithValidationDir(Path(profile.validation.directory), **common)
    else:
        out_dir = Path(work_dir or tempfile.mkdtemp(prefix="validation_")) / "validation"
        datamodule = _FolderWithSyntheticValidation(profile.validation, out_dir, **common)
    datamodule.category = category
    return datamodule, has_masks, n_test


def validation_anomalies(datamodule: Folder) -> list[Path]:
    """The anomalous images of the validation split (set up by training): synthetic
    anomalies painted on held-out training images, or the validation folder's defects."""
    samples = datamodule.val_data.samples
    return [Path(p) for p in samples.loc[samples.label_index == 1, "image_path"]]
