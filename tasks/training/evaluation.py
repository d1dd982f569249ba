"""One scoring path for validation and test: raw model scores, float64 metrics.

The model's post-processor keeps scores raw (anomalib's `PostProcessor` with
normalisation off): it still fits the adaptive thresholds on validation data
(anomalib's `F1AdaptiveThreshold`, which takes scores as they are), but nothing is
clamped or squashed on the way to a metric. A `PredictionCollector` keeps every
validation and test image's raw score and anomaly map, and the metrics are computed
from them in float64 with scikit-learn (image/pixel AUROC, F1 at the validation
threshold, F1Max) and anomalib's AUPRO (Bergmann et al. 2021, "The MVTec Anomaly
Detection Dataset", IJCV, FPR limit 0.3). anomalib's own AUROC is not used on raw
scores: torchmetrics reads values outside [0, 1] as logits and applies a sigmoid,
which maps PatchCore's distances (~30) all to 1.0, so every image tied and the
validation AUROC was exactly 0.5.

The validation AUROC comes with a Hanley-McNeil interval (Hanley & McNeil 1982,
"The meaning and use of the area under a ROC curve", Radiology): a model is called
broken only when the interval's upper bound is below chance, or its scores are
non-finite or constant.

Example:
    >>> import numpy as np
    >>> v = auroc_with_interval(np.array([0.1, 0.2, 0.9, 0.8]), np.array([0, 0, 1, 1]))
    >>> v.auroc, v.pairs
    (1.0, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.metrics.aupro import _AUPRO
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from scipy.stats import norm
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score, roc_curve

IMAGE_F1_METHOD = (
    "F1 at anomalib's F1AdaptiveThreshold fitted on validation data (raw scores, float64)"
)
CHANCE = 0.5
_ROC_MAX_PIXELS = 2_000_000  # pixel ROC curve for the chart: a strided sample is plenty


def raw_score_post_processor() -> PostProcessor:
    """anomalib's PostProcessor that fits thresholds on validation but never normalises."""
    return PostProcessor(enable_normalization=False)


# --------------------------------------------------------------------------- collecting


@dataclass
class ScoredImage:
    path: str
    label: int
    defect_type: str
    score: float  # the model's raw image score
    anomaly_map: np.ndarray  # float32, model resolution, raw
    mask: np.ndarray | None  # bool, or None without masks


class PredictionCollector(Callback):
    """Keep each validation and test image's raw score, anomaly map and mask.

    With normalisation off the post-processor only adds labels, so what is read at the
    end of the epoch is the model's own output, whatever the callback order."""

    def __init__(self) -> None:
        self._batches: list[Any] = []
        self.images: list[ScoredImage] = []

    def _keep(self, outputs: Any) -> None:
        self._batches.append(outputs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl=0):  # noqa: D102
        del trainer, pl_module, batch, batch_idx, dl
        self._keep(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl=0):  # noqa: D102
        del trainer, pl_module, batch, batch_idx, dl
        self._keep(outputs)

    def _flush(self) -> None:
        for batch in self._batches:
            masks = getattr(batch, "gt_mask", None)
            for i, path in enumerate(batch.image_path):
                self.images.append(
                    ScoredImage(
                        path=str(path),
                        label=int(batch.gt_label[i]),
                        defect_type=Path(path).parent.name,
                        score=float(batch.pred_score[i].double().cpu()),
                        anomaly_map=batch.anomaly_map[i].squeeze().float().cpu().numpy(),
                        mask=None if masks is None else masks[i].squeeze().cpu().numpy() > 0,
                    )
                )
        self._batches.clear()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer, pl_module
        self._flush()

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer, pl_module
        self._flush()

    def take(self) -> list[ScoredImage]:
        images, self.images = self.images, []
        return images


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class AurocInterval:
    """Image AUROC with its Hanley-McNeil interval on `n_normal` x `n_anomalous` pairs."""

    auroc: float
    low: float
    high: float
    n_normal: int
    n_anomalous: int

    @property
    def pairs(self) -> int:
        return self.n_normal * self.n_anomalous

    @property
    def below_chance(self) -> bool:
        """The evidence says the model ranks anomalies *under* normal images."""
        return self.high < CHANCE


def auroc_with_interval(
    scores: np.ndarray, labels: np.ndarray, confidence: float = 0.95
) -> AurocInterval:
    """AUROC in float64 (scikit-learn) and its Hanley-McNeil normal-approximation interval
    (variance at the AUROC with two pseudo-pairs added, so 0 and 1 keep a width).

    Raises ValueError when a class is missing or a score is not finite."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    n_anomalous = int(labels.sum())
    n_normal = int(len(labels) - n_anomalous)
    if n_anomalous == 0 or n_normal == 0:
        raise ValueError("AUROC needs normal and anomalous images")
    auroc = float(roc_auc_score(labels, scores))
    # At an AUROC of 0 or 1 the formula's variance is 0 for any number of pairs, so
    # 3 perfectly ordered pairs would "prove" a perfect model. The variance is taken at
    # the AUROC with one rightly and one wrongly ordered pseudo-pair added (Laplace's
    # rule of succession): small sets keep a wide interval, large ones barely change.
    pairs = n_anomalous * n_normal
    a = (auroc * pairs + 1) / (pairs + 2)
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    variance = (
        a * (1 - a) + (n_anomalous - 1) * (q1 - a**2) + (n_normal - 1) * (q2 - a**2)
    ) / pairs
    half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(max(variance, 0.0))
    return AurocInterval(
        auroc, max(0.0, auroc - half), min(1.0, auroc + half), n_normal, n_anomalous
    )


@dataclass(frozen=True)
class ValidationVerdict:
    """What validation says about one trained attempt."""

    interval: AurocInterval | None
    problem: str | None  # None = plausible; else why the model is broken

    @property
    def auroc(self) -> float | None:
        return None if self.interval is None else self.interval.auroc


def judge_validation(images: list[ScoredImage], confidence: float = 0.95) -> ValidationVerdict:
    """Broken only on evidence: non-finite or constant scores, or the interval's upper
    bound below chance. A low but uncertain AUROC is kept, with its interval."""
    scores = np.array([im.score for im in images], dtype=np.float64)
    labels = np.array([im.label for im in images], dtype=np.int64)
    if len(scores) == 0 or labels.min() == labels.max():
        return ValidationVerdict(None, "validation data has no normal or no anomalous image")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        return ValidationVerdict(None, f"{bad} of {len(scores)} validation scores are not finite")
    interval = auroc_with_interval(scores, labels, confidence)
    if np.ptp(scores) == 0:
        return ValidationVerdict(interval, f"all {len(scores)} validation scores are {scores[0]}")
    if interval.below_chance:
        return ValidationVerdict(
            interval,
            f"validation image AUROC {interval.auroc:.3f} (interval {interval.low:.3f}-"
            f"{interval.high:.3f}, {interval.pairs} pairs) is below chance",
        )
    return ValidationVerdict(interval, None)


def _f1max(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def image_metrics(
    scores: np.ndarray, labels: np.ndarray, threshold: float | None
) -> dict[str, float | None]:
    """Image AUROC, F1 at the validation threshold (score >= threshold), F1Max."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    both = labels.min() != labels.max()
    finite = bool(np.isfinite(scores).all())
    ok = both and finite
    f1 = None
    if finite and threshold is not None and math.isfinite(threshold):
        f1 = float(f1_score(labels, scores >= threshold, zero_division=0.0))
    return {
        "image_auroc": float(roc_auc_score(labels, scores)) if ok else None,
        "image_f1": f1,
        "image_f1max": _f1max(scores, labels) if ok else None,
    }


def pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, threshold: float | None
) -> dict[str, float | None]:
    """Pixel AUROC (float64), pixel F1 at the validation pixel threshold, AUPRO."""
    flat = np.asarray(maps, dtype=np.float64).ravel()
    truth = np.asarray(masks, dtype=bool).ravel()
    if truth.all() or not truth.any() or not np.isfinite(flat).all():
        return {"pixel_auroc": None, "pixel_f1": None, "aupro": None}
    f1 = None
    if threshold is not None and math.isfinite(threshold):
        f1 = float(f1_score(truth, flat >= threshold, zero_division=0.0))
    aupro = _AUPRO(fpr_limit=0.3)
    aupro.update(torch.from_numpy(np.asarray(maps, np.float32)), torch.from_numpy(masks).int())
    return {
        "pixel_auroc": float(roc_auc_score(truth, flat)),
        "pixel_f1": f1,
        "aupro": float(aupro.compute()),
    }


def test_metrics(
    images: list[ScoredImage],
    image_threshold: float | None,
    pixel_threshold: float | None,
    has_masks: bool,
) -> dict[str, Any]:
    """ModelResult.metrics from raw test predictions; None where not available."""
    scores = np.array([im.score for im in images], dtype=np.float64)
    labels = np.array([im.label for im in images], dtype=np.int64)
    metrics: dict[str, Any] = image_metrics(scores, labels, image_threshold)
    if has_masks and images and all(im.mask is not None for im in images):
        maps = np.stack([im.anomaly_map for im in images])
        masks = np.stack([_fit_mask(im.mask, im.anomaly_map.shape) for im in images])
        metrics.update(pixel_metrics(maps, masks, pixel_threshold))
    else:
        metrics.update(pixel_auroc=None, pixel_f1=None, aupro=None)
    metrics["image_f1_method"] = IMAGE_F1_METHOD
    return metrics


def _fit_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]))
    return np.asarray(resized) > 127


def image_scores(images: list[ScoredImage]) -> list[dict]:
    """ModelResult.scores: one row per test image (the raw score)."""
    return [
        {"path": im.path, "label": im.label, "defect_type": im.defect_type, "score": im.score}
        for im in images
    ]


def _downsample(fpr: np.ndarray, tpr: np.ndarray, max_points: int) -> list[tuple[float, float]]:
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [(float(f), float(t)) for f, t in zip(fpr, tpr, strict=True)]


def roc_points(images: list[ScoredImage], max_points: int = 100) -> list[tuple[str, float, float]]:
    """Image- and (with masks) pixel-level ROC curves, each at most `max_points` points."""
    labels = np.array([im.label for im in images])
    scores = np.array([im.score for im in images], dtype=np.float64)
    points: list[tuple[str, float, float]] = []
    if len(set(labels.tolist())) == 2 and np.isfinite(scores).all():
        fpr, tpr, _ = roc_curve(labels, scores)
        points += [("image", f, t) for f, t in _downsample(fpr, tpr, max_points)]
    if images and all(im.mask is not None for im in images):
        maps = np.stack([im.anomaly_map for im in images]).ravel()
        masks = np.stack([_fit_mask(im.mask, im.anomaly_map.shape) for im in images]).ravel()
        stride = max(1, len(maps) // _ROC_MAX_PIXELS)
        maps, masks = maps[::stride], masks[::stride]
        if masks.any() and not masks.all() and np.isfinite(maps).all():
            fpr, tpr, _ = roc_curve(masks, maps.astype(np.float64), drop_intermediate=True)
            points += [("pixel", f, t) for f, t in _downsample(fpr, tpr, max_points)]
    return points


# --------------------------------------------------------------------------- overlays


def overlay_range(images: list[ScoredImage]) -> tuple[float, float]:
    """One colour scale for every overlay of a (model, category): from the 99th percentile
    of the good test images' pixels (normal texture stays uncoloured) to the highest
    pixel of the test split, so a defect's hot region stands out against the rest.
    Without good test images the lower end is the median pixel of all of them."""
    every = np.stack([im.anomaly_map for im in images]).astype(np.float64)
    good = [im.anomaly_map for im in images if im.label == 0]
    low = float(np.percentile(np.stack(good), 99)) if good else float(np.median(every))
    high = float(every.max())
    return low, max(high, low + 1e-12)


def overlay_heat(anomaly_map: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """The anomaly map on the shared colour scale, in [0, 1]."""
    low, high = value_range
    return np.clip((anomaly_map.astype(np.float64) - low) / (high - low), 0.0, 1.0)


def _overlay(image_path: str, heat: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """The image with the anomaly map as a red heat layer and the true defect outlined."""
    h, w = heat.shape
    base = np.asarray(Image.open(image_path).convert("RGB").resize((w, h)), dtype=np.float32)
    red = np.zeros_like(base)
    red[..., 0] = 255.0
    alpha = 0.6 * heat[..., None]
    out = base * (1 - alpha) + red * alpha
    if mask is not None and mask.any():
        m = _fit_mask(mask, (h, w))
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = (0.0, 255.0, 0.0)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def save_overlays(images: list[ScoredImage], out_dir: Path, count: int) -> dict[str, str]:
    """Overlays of the `count` best and worst defective test images (by score), all on
    one colour scale (`overlay_range`).

    Best: defects scored highest (found). Worst: defects scored lowest (missed); with
    no defective images, the good images scored highest (false alarms) instead."""
    if count == 0 or not images:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    value_range = overlay_range(images)
    defective = sorted((im for im in images if im.label == 1), key=lambda im: -im.score)
    good = sorted((im for im in images if im.label == 0), key=lambda im: -im.score)
    best = defective[:count]
    worst = defective[::-1][:count] if defective else good[:count]
    artifacts: dict[str, str] = {}
    for kind, chosen in (("best", best), ("worst", worst)):
        for i, im in enumerate(chosen):
            path = out_dir / f"overlay_{kind}_{i}_{Path(im.path).stem}.png"
            _overlay(im.path, overlay_heat(im.anomaly_map, value_range), im.mask).save(path)
            artifacts[f"overlay_{kind}_{i}"] = str(path)
    return artifacts
