"""The stratified image bootstrap: exact against a weighted scikit-learn AUROC per replicate."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.stats.bootstrap import (
    METHOD_BOOTSTRAP,
    _replicate_weights,
    bootstrap_auroc,
    bootstrap_pixel_auroc,
)
from tasks.stats.delong import auroc_interval, delong_interval, delong_variance


def demo_split(seed=0, n_good=8, n_defective=12):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * n_good + [1] * n_defective)
    return np.round(rng.normal(labels * 1.2), 1), labels


def reference_interval(weights, auroc_of, level):
    aurocs = np.array([auroc_of(w) for w in weights])
    return tuple(np.quantile(aurocs, [(1 - level) / 2, (1 + level) / 2]))


def test_image_bootstrap_equals_weighted_sklearn_replicates():
    scores, labels = demo_split()
    result = bootstrap_auroc(scores, labels, level=0.9, replicates=300, seed=5)
    assert result.method == METHOD_BOOTSTRAP and result.replicates == 300 and result.seed == 5
    assert result.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    strata = (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1))
    weights = _replicate_weights(labels.size, strata, 300, np.random.default_rng(5))
    expected = reference_interval(
        weights, lambda w: roc_auc_score(labels, scores, sample_weight=w), 0.9
    )
    assert (result.low, result.high) == pytest.approx(expected, abs=1e-12)


def test_replicates_keep_each_class_size():
    strata = (np.arange(8), np.arange(8, 20))
    weights = _replicate_weights(20, strata, 50, np.random.default_rng(0))
    assert np.all(weights[:, :8].sum(axis=1) == 8) and np.all(weights[:, 8:].sum(axis=1) == 12)


def test_seeded_and_reproducible():
    scores, labels = demo_split(1)
    a = bootstrap_auroc(scores, labels, replicates=200, seed=3)
    assert a == bootstrap_auroc(scores, labels, replicates=200, seed=3)
    assert a != bootstrap_auroc(scores, labels, replicates=200, seed=4)


def test_close_to_delong_on_a_larger_split():
    scores, labels = demo_split(2, n_good=150, n_defective=200)
    boot = bootstrap_auroc(scores, labels, replicates=2000, seed=0)
    delong = auroc_interval(scores, labels)
    assert abs(boot.low - delong.low) < 0.02 and abs(boot.high - delong.high) < 0.02
    assert boot.variance == pytest.approx(delong.variance, rel=0.25)


def test_perfect_split_gives_the_degenerate_interval():
    labels = np.array([0] * 8 + [1] * 12)
    scores = np.concatenate([np.linspace(0, 0.4, 8), np.linspace(0.6, 1, 12)])
    result = bootstrap_auroc(scores, labels, replicates=100)
    assert (result.auroc, result.low, result.high) == (1.0, 1.0, 1.0)


def pixel_set(seed=0, size=16, n_good=6, n_defective=6):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n_good + n_defective):
        heat = rng.normal(size=(size, size)).round(1)  # ties between pixels
        mask = np.zeros((size, size), dtype=bool)
        if i >= n_good:
            mask[2 : 4 + i % 5, 3:9] = True
            heat[mask] += 2.0 if i % 2 else 0.2  # some defects obvious, some faint
        maps.append(heat.astype(np.float32))
        masks.append(mask)
    return maps, masks


def test_pixel_bootstrap_equals_weighted_sklearn_on_pooled_pixels():
    maps, masks = pixel_set()
    truth = np.concatenate([m.ravel() for m in masks])
    flat = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    result = bootstrap_pixel_auroc(maps, masks, level=0.95, replicates=200, seed=9)
    assert result.auroc == pytest.approx(roc_auc_score(truth, flat), abs=1e-12)
    assert (result.n_normal, result.n_anomalous) == (6, 6)
    strata = (np.arange(6), np.arange(6, 12))
    weights = _replicate_weights(12, strata, 200, np.random.default_rng(9))
    per_pixel = np.repeat(np.arange(12), maps[0].size)
    expected = reference_interval(
        weights, lambda w: roc_auc_score(truth, flat, sample_weight=w[per_pixel]), 0.95
    )
    assert (result.low, result.high) == pytest.approx(expected, abs=1e-12)


def test_pixel_bootstrap_resamples_images_not_pixels():
    # Obvious and faint defects alternate: which images are drawn matters, so the interval
    # is far wider than DeLong's on the pooled pixels, which treats pixels as independent.
    maps, masks = pixel_set(1, size=32)
    truth = np.concatenate([m.ravel() for m in masks]).astype(int)
    flat = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    pixel_delong = delong_interval(*delong_variance(flat, truth))
    result = bootstrap_pixel_auroc(maps, masks, replicates=500, seed=0)
    assert (result.high - result.low) > 3 * (pixel_delong[1] - pixel_delong[0])


def test_pixel_bootstrap_bad_input():
    maps, masks = pixel_set()
    with pytest.raises(ValueError, match="image 2: mask has"):
        bootstrap_pixel_auroc(maps, masks[:2] + [np.zeros((3, 3), bool)] + masks[3:])
    with pytest.raises(ValueError, match="anomalous pixels"):
        bootstrap_pixel_auroc(maps[:6], masks[:6])
    broken = [m.copy() for m in maps]
    broken[7][0, 0] = np.nan
    with pytest.raises(ValueError, match="image 7"):
        bootstrap_pixel_auroc(broken, masks)
