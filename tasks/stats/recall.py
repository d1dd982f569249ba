"""Recall-first operating points of one score set: what an inspector must accept to catch
every defect, and what recall a threshold gives.

The operating points of a ROC curve as in Fawcett (2006), "An introduction to ROC
analysis", Pattern Recognition Letters 27(8). One decision rule throughout, the project's
(as its F1 at the validation threshold): an image is flagged anomalous when its score is at
or above the threshold. A threshold cannot split images with equal scores, so a good image
tied with a defect is flagged with it.

Example:
    >>> labels = np.array([0, 0, 0, 0, 1, 1])
    >>> scores = np.array([0.1, 0.2, 0.5, 0.7, 0.5, 0.9])
    >>> fpr_at_full_recall(scores, labels)  # the defect at 0.5 flags the goods at 0.5, 0.7
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OperatingPoint:
    """Recall and false-positive rate when images scoring >= `threshold` are flagged."""

    threshold: float
    recall: float
    fpr: float


@dataclass(frozen=True)
class RecallFirstMetrics:
    """The recall-first figures of one score set (see the module docstring's rule)."""

    fpr_at_full_recall: float
    full_recall_threshold: float  # the lowest defect's score
    at_threshold: OperatingPoint | None  # the validation threshold's; None without one
    recall_at_fpr_1: OperatingPoint  # best recall with FPR <= 1 %
    recall_at_fpr_5: OperatingPoint  # best recall with FPR <= 5 %


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-D and equal")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    good, defects = scores[labels == 0], scores[labels == 1]
    if good.size == 0 or defects.size == 0:
        raise ValueError("recall and false-positive rate need good and anomalous images")
    return good, defects


def fpr_at_full_recall(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of good images scoring at or above the lowest-scoring defect: the good parts
    rejected by the highest threshold that still catches every defect."""
    good, defects = _split(scores, labels)
    return float((good >= defects.min()).mean())


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> OperatingPoint:
    """Recall and FPR with images scoring >= `threshold` flagged (e.g. validation's)."""
    good, defects = _split(scores, labels)
    return OperatingPoint(
        float(threshold), float((defects >= threshold).mean()), float((good >= threshold).mean())
    )


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> OperatingPoint:
    """The highest recall among thresholds whose FPR is at most `max_fpr`.

    The thresholds tried are the observed scores and +inf (nothing flagged, recall 0). Of
    thresholds with the same recall, the highest (lowest FPR) is returned. With 8 good
    images an FPR of 1 % or 5 % allows no false positive: the threshold must lie above
    every good image."""
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in [0, 1], got {max_fpr}")
    good, defects = _split(scores, labels)
    thresholds = np.append(np.unique(np.concatenate([good, defects])), np.inf)
    # counts at or above each threshold, via the sorted scores
    good_sorted, defects_sorted = np.sort(good), np.sort(defects)
    fpr = (good.size - np.searchsorted(good_sorted, thresholds, "left")) / good.size
    recall = (defects.size - np.searchsorted(defects_sorted, thresholds, "left")) / defects.size
    allowed = fpr <= max_fpr
    best = np.max(recall[allowed])
    # thresholds ascend, so the last allowed one with the best recall is the highest
    index = int(np.flatnonzero(allowed & (recall == best))[-1])
    return OperatingPoint(float(thresholds[index]), float(recall[index]), float(fpr[index]))


def recall_first_metrics(
    scores: np.ndarray, labels: np.ndarray, threshold: float | None = None
) -> RecallFirstMetrics:
    """Every recall-first figure of one score set; `threshold` is validation's, if any."""
    good, defects = _split(scores, labels)
    at = None
    if threshold is not None and np.isfinite(threshold):
        at = operating_point(scores, labels, threshold)
    return RecallFirstMetrics(
        fpr_at_full_recall=fpr_at_full_recall(scores, labels),
        full_recall_threshold=float(defects.min()),
        at_threshold=at,
        recall_at_fpr_1=recall_at_fpr(scores, labels, 0.01),
        recall_at_fpr_5=recall_at_fpr(scores, labels, 0.05),
    )
