"""Evaluation of a trained anomalib model on the complete test split.

The numbers come from anomalib's own metrics, run by its `Evaluator` during
`Engine.test`: image AUROC, image F1 at the adaptive threshold (anomalib's
`F1AdaptiveThreshold`, fitted on the *validation* data by the `PostProcessor`), F1Max
(the best F1 over all thresholds on the test data: optimistic, recorded apart), pixel
AUROC, pixel F1 and AUPRO (Bergmann et al. 2021, "The MVTec Anomaly Detection Dataset",
IJCV, FPR limit 0.3). Pixel metrics are None when the test data has no masks.

Around them: a callback that keeps every test image's score and anomaly map, ROC
points (downsampled) for the report, and a few overlays of the best and worst images.

Example:
    >>> evaluator = build_evaluator()
    >>> [m.name for m in evaluator.val_metrics]
    ['val_image_AUROC']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max, F1Score
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torchmetrics.functional.classification import binary_roc

IMAGE_F1_METHOD = "F1 at anomalib's F1AdaptiveThreshold fitted on validation data"
VAL_IMAGE_AUROC = "val_image_AUROC"

# anomalib metric name -> ModelResult.metrics key
_METRIC_KEYS = {
    "image_AUROC": "image_auroc",
    "image_F1Score": "image_f1",
    "image_F1Max": "image_f1max",
    "pixel_AUROC": "pixel_auroc",
    "pixel_F1Score": "pixel_f1",
    "pixel_AUPRO": "aupro",
}
_ROC_THRESHOLDS = 256  # binned pixel ROC: millions of pixels, a curve of 256 points is plenty


class RankPreservingPostProcessor(PostProcessor):
    """anomalib's PostProcessor, with a normalisation that keeps the order of scores.

    anomalib maps scores to ((score - threshold) / (max - min) + 0.5) and clamps to [0, 1],
    with min/max seen on validation. On a small validation split most test scores fall
    outside that range and clamp to the same 0 or 1, and AUROC collapses towards 0.5.
    Raw scores are no way out either: torchmetrics treats values outside [0, 1] as logits
    and applies a sigmoid, which saturates PatchCore's distances (~30) to one value.
    Here the same affine map goes through a logistic instead of a clamp: 0.5 is still the
    adaptive threshold, every value stays inside (0, 1), and the order of scores (so
    AUROC, F1Max and AUPRO) is that of the model's raw scores.
    """

    @staticmethod
    def _normalize(
        preds: torch.Tensor | None,
        norm_min: torch.Tensor,
        norm_max: torch.Tensor,
        threshold: torch.Tensor,
    ) -> torch.Tensor | None:
        if preds is None:
            return preds
        threshold = torch.where(torch.isnan(threshold), (norm_max + norm_min) / 2, threshold)
        value_range = norm_max - norm_min
        safe_range = torch.where(value_range > 0, value_range, torch.ones_like(value_range))
        # float64: a logistic in float32 would saturate (and tie) far-out scores
        normalized = torch.sigmoid(4 * (preds.double() - threshold) / safe_range).to(preds.dtype)
        has_range = ~torch.isnan(norm_min) & ~torch.isnan(norm_max)
        return torch.where(has_range, normalized, preds)


def build_evaluator(aupro: bool = True) -> Evaluator:
    """Validation: image AUROC (selects among attempts). Test: the benchmark's metrics.

    Pixel metrics are non-strict: without masks they are skipped and come back None."""
    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
    ]
    if aupro:
        test_metrics.append(AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False))
    val_metrics = [AUROC(fields=["pred_score", "gt_label"], prefix="val_image_")]
    return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_from_test(results: dict[str, Any], has_masks: bool) -> dict[str, Any]:
    """Map anomalib's logged test metrics onto ModelResult.metrics keys.

    Missing or non-finite values become None, and pixel metrics are None without masks
    (never 0, which would read as a real, terrible score)."""
    metrics: dict[str, Any] = {
        key: _finite_or_none(results.get(name)) for name, key in _METRIC_KEYS.items()
    }
    if not has_masks:
        metrics.update(pixel_auroc=None, pixel_f1=None, aupro=None)
    metrics["image_f1_method"] = IMAGE_F1_METHOD
    return metrics


@dataclass
class TestImage:
    path: str
    label: int
    defect_type: str
    score: float  # normalised by anomalib's PostProcessor (0.5 = the adaptive threshold)
    anomaly_map: np.ndarray  # float16, model resolution
    mask: np.ndarray | None


class TestPredictionCollector(Callback):
    """Keep each test image's prediction after anomalib's post-processing.

    Lightning passes the same output batch to every callback and the PostProcessor
    normalises it in place after this callback has run, so the batches are kept and
    read once the test epoch is over."""

    def __init__(self) -> None:
        self._batches: list[Any] = []
        self.images: list[TestImage] = []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        self._batches.append(outputs)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer, pl_module
        for batch in self._batches:
            masks = batch.gt_mask
            for i, path in enumerate(batch.image_path):
                self.images.append(
                    TestImage(
                        path=str(path),
                        label=int(batch.gt_label[i]),
                        defect_type=Path(path).parent.name,
                        score=float(batch.pred_score[i]),
                        anomaly_map=batch.anomaly_map[i]
                        .squeeze()
                        .float()
                        .cpu()
                        .numpy()
                        .astype(np.float16),
                        mask=None if masks is None else masks[i].squeeze().cpu().numpy() > 0,
                    )
                )
        self._batches.clear()


def image_scores(images: list[TestImage]) -> list[dict]:
    """ModelResult.scores: one row per test image."""
    return [
        {"path": im.path, "label": im.label, "defect_type": im.defect_type, "score": im.score}
        for im in images
    ]


def _downsample(fpr: torch.Tensor, tpr: torch.Tensor, max_points: int) -> list[tuple]:
    order = np.lexsort((tpr.float().cpu().numpy(), fpr.float().cpu().numpy()))
    fpr, tpr = fpr.float().cpu().numpy()[order], tpr.float().cpu().numpy()[order]
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [(float(f), float(t)) for f, t in zip(fpr, tpr, strict=True)]


def roc_points(images: list[TestImage], max_points: int = 100) -> list[tuple[str, float, float]]:
    """Image- and (with masks) pixel-level ROC curves, each at most `max_points` points."""
    labels = torch.tensor([im.label for im in images])
    points: list[tuple[str, float, float]] = []
    if labels.unique().numel() == 2:
        scores = torch.tensor([im.score for im in images])
        fpr, tpr, _ = binary_roc(scores, labels)
        points += [("image", f, t) for f, t in _downsample(fpr, tpr, max_points)]
    if images and all(im.mask is not None for im in images):
        maps = torch.from_numpy(np.stack([im.anomaly_map.astype(np.float32) for im in images]))
        masks = torch.from_numpy(np.stack([im.mask for im in images])).long()
        if masks.any() and not masks.all():
            # Anomaly maps are unbounded before normalisation: scale to [0, 1] for bins.
            lo, hi = maps.min(), maps.max()
            maps = (maps - lo) / (hi - lo) if hi > lo else torch.zeros_like(maps)
            fpr, tpr, _ = binary_roc(maps.flatten(), masks.flatten(), thresholds=_ROC_THRESHOLDS)
            points += [("pixel", f, t) for f, t in _downsample(fpr, tpr, max_points)]
    return points


def _overlay(image_path: str, anomaly_map: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """The image with the anomaly map as a red heat layer and the true defect outlined."""
    heat = anomaly_map.astype(np.float32)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
    h, w = heat.shape
    base = np.asarray(Image.open(image_path).convert("RGB").resize((w, h)), dtype=np.float32)
    red = np.zeros_like(base)
    red[..., 0] = 255.0
    alpha = 0.6 * heat[..., None]
    out = base * (1 - alpha) + red * alpha
    if mask is not None and mask.any():
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h))) > 0
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = (0.0, 255.0, 0.0)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def save_overlays(images: list[TestImage], out_dir: Path, count: int) -> dict[str, str]:
    """Overlays of the `count` best and worst defective test images (by score).

    Best: defects scored highest (found). Worst: defects scored lowest (missed); with
    no defective images, the good images scored highest (false alarms) instead."""
    if count == 0 or not images:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    defective = sorted((im for im in images if im.label == 1), key=lambda im: -im.score)
    good = sorted((im for im in images if im.label == 0), key=lambda im: -im.score)
    best = defective[:count]
    worst = defective[::-1][:count] if defective else good[:count]
    artifacts: dict[str, str] = {}
    for kind, chosen in (("best", best), ("worst", worst)):
        for i, im in enumerate(chosen):
            path = out_dir / f"overlay_{kind}_{i}_{Path(im.path).stem}.png"
            _overlay(im.path, im.anomaly_map, im.mask).save(path)
            artifacts[f"overlay_{kind}_{i}"] = str(path)
    return artifacts
