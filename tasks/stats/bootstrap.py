"""Stratified bootstrap interval of an image or pixel AUROC, resampling images.

Efron & Tibshirani (1993), "An Introduction to the Bootstrap", chapter 13 (the percentile
interval); stratified as in pROC's `ci.auc(method = "bootstrap", boot.stratified = TRUE)`:
good and defective images are resampled separately, so every replicate keeps the split's
class sizes.

For a pixel AUROC the unit resampled is the image, never the pixel: pixels of one image
are not independent, and a pixel bootstrap would give a far too narrow interval. The
AUROC of any resample is a weighted sum over pairs of images, so the pair counts are
computed once (`_pair_counts`: for each defective image and each image, how many of its
anomalous pixels outscore the other's normal pixels, ties one half) and every replicate is
then two small matrix products.

At a perfect split every replicate is perfect too, so the interval is [1, 1]: the
bootstrap cannot widen it (`tasks.stats.delong.auroc_interval` can).

Example:
    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.3])
    >>> bootstrap_auroc(scores, labels, replicates=200, seed=1).method
    'bootstrap-percentile'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.stats.delong import AurocInterval

METHOD_BOOTSTRAP = "bootstrap-percentile"


def _replicate_weights(
    n_images: int, strata: Sequence[np.ndarray], replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """(replicates, n_images) counts: each stratum's images drawn with replacement."""
    weights = np.zeros((replicates, n_images))
    for members in strata:
        size = members.size
        if size == 0:  # e.g. a pixel AUROC on defective images only
            continue
        draws = rng.multinomial(size, np.full(size, 1.0 / size), size=replicates)
        weights[:, members] = draws
    return weights


def _percentile_interval(
    point: float,
    pairs: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    rows: np.ndarray,
    strata: tuple[np.ndarray, np.ndarray],
    level: float,
    replicates: int,
    seed: int,
) -> AurocInterval:
    """The percentile interval of AUROC(w) = w_r' pairs w_c / ((w . positives)(w . negatives)),
    w an image's count in a replicate, `rows` the images with anomalous pixels."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if replicates < 2:
        raise ValueError(f"replicates must be at least 2, got {replicates}")
    n_images = negatives.size
    w = _replicate_weights(n_images, strata, replicates, np.random.default_rng(seed))
    numerator = ((w[:, rows] @ pairs) * w).sum(axis=1)
    denominator = (w[:, rows] @ positives) * (w @ negatives)
    usable = denominator > 0  # e.g. every drawn defective image had an empty mask
    aurocs = numerator[usable] / denominator[usable]
    if aurocs.size < 2:
        raise ValueError("fewer than 2 replicates had anomalous and normal pixels")
    low, high = np.quantile(aurocs, [(1 - level) / 2, (1 + level) / 2])
    good, defective = strata
    return AurocInterval(
        auroc=point,
        low=float(low),
        high=float(high),
        level=level,
        method=METHOD_BOOTSTRAP,
        variance=float(np.var(aurocs, ddof=1)),
        n_normal=int(good.size),
        n_anomalous=int(defective.size),
        replicates=int(aurocs.size),
        seed=seed,
    )


def bootstrap_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    level: float = 0.95,
    replicates: int = 2000,
    seed: int = 0,
) -> AurocInterval:
    """Image AUROC with a stratified percentile-bootstrap interval (seeded: reproducible)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be 1-D and equal")
    if not np.isfinite(scores).all() or not np.isin(labels, (0, 1)).all():
        raise ValueError("scores must be finite and labels 0 (good) or 1 (anomalous)")
    defective, good = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if defective.size == 0 or good.size == 0:
        raise ValueError("AUROC needs good and anomalous images")
    x, y = scores[defective, None], scores[None, :]
    pairs = (x > y) + 0.5 * (x == y)
    pairs[:, defective] = 0.0  # a defective image has no normal "pixel"
    positives = np.ones(defective.size)
    negatives = (labels == 0).astype(np.float64)
    point = float(pairs.sum() / (defective.size * good.size))
    return _percentile_interval(
        point, pairs, positives, negatives, defective, (good, defective), level, replicates, seed
    )


def _pair_counts(
    maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pairs[r, c] = sum over anomalous pixels of image rows[r] and normal pixels of image c
    of [anomalous > normal] + 1/2 [equal]; with each image's anomalous and normal counts."""
    normal = [np.sort(m[~k]) for m, k in zip(maps, masks, strict=True)]
    anomalous = [maps[i][masks[i]] for i in rows]
    owner = np.repeat(np.arange(rows.size), [a.size for a in anomalous])
    flat = np.concatenate(anomalous) if anomalous else np.zeros(0)
    order = np.argsort(flat, kind="stable")  # sorted queries search faster
    flat, owner = flat[order], owner[order]
    pairs = np.zeros((rows.size, len(maps)))
    for c, below in enumerate(normal):
        if below.size == 0:
            continue
        less = np.searchsorted(below, flat, "left")
        equal = np.searchsorted(below, flat, "right") - less
        pairs[:, c] = np.bincount(owner, weights=less + 0.5 * equal, minlength=rows.size)
    positives = np.array([a.size for a in anomalous], dtype=np.float64)
    negatives = np.array([b.size for b in normal], dtype=np.float64)
    return pairs, positives, negatives


def bootstrap_pixel_auroc(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    level: float = 0.95,
    replicates: int = 1000,
    seed: int = 0,
) -> AurocInterval:
    """Pixel AUROC over all test images with a stratified bootstrap over images.

    `maps` are each image's pixel scores and `masks` its ground truth (same shape, true =
    anomalous pixel). An image with any anomalous pixel is in the defective stratum, every
    other image in the good one. The point estimate is the pooled pixel AUROC (scikit-
    learn's `roc_auc_score` on all pixels)."""
    if len(maps) != len(masks) or len(maps) == 0:
        raise ValueError(f"{len(maps)} maps and {len(masks)} masks: one mask per map needed")
    maps = [np.asarray(m, dtype=np.float64).ravel() for m in maps]
    checked = []
    for i, (m, k) in enumerate(zip(maps, masks, strict=True)):
        k = np.asarray(k).astype(bool).ravel()
        if k.shape != m.shape:
            raise ValueError(f"image {i}: mask has {k.size} pixels, map has {m.size}")
        if not np.isfinite(m).all():
            raise ValueError(f"image {i}: {int((~np.isfinite(m)).sum())} pixel scores not finite")
        checked.append(k)
    defective = np.flatnonzero([k.any() for k in checked])
    good = np.flatnonzero([not k.any() for k in checked])
    if defective.size == 0:
        raise ValueError("pixel AUROC needs at least one image with anomalous pixels")
    pairs, positives, negatives = _pair_counts(maps, checked, defective)
    if negatives.sum() == 0:
        raise ValueError("pixel AUROC needs normal pixels")
    point = float(pairs.sum() / (positives.sum() * negatives.sum()))
    return _percentile_interval(
        point, pairs, positives, negatives, defective, (good, defective), level, replicates, seed
    )
