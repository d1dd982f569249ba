"""The float64 scoring path: raw scores of any range, ties, NaN; the validation verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUROC

from tasks.training.evaluation import (
    ScoredImage,
    auroc_with_interval,
    image_metrics,
    judge_validation,
    overlay_heat,
    overlay_range,
    pixel_metrics,
)


def _images(scores, labels) -> list[ScoredImage]:
    return [
        ScoredImage(f"{i}.png", int(y), "x", float(s), np.zeros((4, 4), np.float32), None)
        for i, (s, y) in enumerate(zip(scores, labels, strict=True))
    ]


def test_far_out_scores_keep_their_order_where_a_sigmoid_would_tie_them():
    # PatchCore-like distances: all far above 1, anomalies a little further out.
    scores = np.array([30.0, 30.5, 31.0, 31.2, 31.5, 32.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert image_metrics(scores, labels, threshold=31.1)["image_auroc"] == 1.0
    # anomalib's AUROC on the same raw values: torchmetrics reads them as logits and the
    # sigmoid ties them all at 1.0 in float32: the exact 0.5 this path replaces.
    batch = ImageBatch(
        image=torch.zeros(6, 3, 8, 8),
        gt_label=torch.tensor(labels),
        pred_score=torch.tensor(scores, dtype=torch.float32),
    )
    tied = AUROC(fields=["pred_score", "gt_label"])
    tied.update(batch)
    assert float(tied.compute()) == pytest.approx(0.5)


def test_scores_far_apart_in_float32_terms_are_ranked_in_float64():
    base = 1e8
    scores = np.array([base, base + 1.0, base + 2.0, base + 3.0])  # equal in float32
    assert np.float32(base) == np.float32(base + 3.0)
    assert image_metrics(scores, np.array([0, 0, 1, 1]), None)["image_auroc"] == 1.0


def test_ties_count_half():
    result = image_metrics(np.array([1.0, 2.0, 2.0, 3.0]), np.array([0, 1, 0, 1]), None)
    assert result["image_auroc"] == pytest.approx(0.875)  # 3.5 of 4 pairs
    assert image_metrics(np.ones(4), np.array([0, 0, 1, 1]), None)["image_auroc"] == 0.5


def test_nan_score_gives_no_metric_rather_than_a_number():
    result = image_metrics(np.array([0.1, np.nan, 0.9, 0.8]), np.array([0, 0, 1, 1]), 0.5)
    assert result == {"image_auroc": None, "image_f1": None, "image_f1max": None}


def test_f1_uses_the_validation_threshold_on_raw_scores():
    scores, labels = np.array([10.0, 20.0, 30.0, 40.0]), np.array([0, 0, 1, 1])
    assert image_metrics(scores, labels, threshold=25.0)["image_f1"] == 1.0
    assert image_metrics(scores, labels, threshold=35.0)["image_f1"] == pytest.approx(2 / 3)


def test_hanley_mcneil_interval_matches_the_published_formula():
    # Hanley & McNeil 1982, table-style example: A = 0.9, 50 normal, 50 abnormal
    rng = np.random.default_rng(0)
    labels = np.array([0] * 50 + [1] * 50)
    scores = np.concatenate([rng.normal(0, 1, 50), rng.normal(1.8, 1, 50)])
    v = auroc_with_interval(scores, labels)
    # the variance at the AUROC with a rightly and a wrongly ordered pseudo-pair added
    a = (v.auroc * 2500 + 1) / 2502
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + 49 * (q1 - a * a) + 49 * (q2 - a * a)) / 2500)
    assert v.low == pytest.approx(v.auroc - 1.959964 * se, abs=1e-6)
    assert v.high == pytest.approx(min(1.0, v.auroc + 1.959964 * se), abs=1e-6)
    assert v.pairs == 2500
    # more pairs, narrower interval
    small = auroc_with_interval(scores[45:55], labels[45:55])
    assert small.high - small.low > v.high - v.low


def test_a_perfect_ranking_on_few_pairs_is_not_a_certainty():
    # 1 held-out normal image x 3 anomalies (4 MVTec leather train images): no evidence
    few = auroc_with_interval(np.array([0.1, 0.5, 0.6, 0.7]), np.array([0, 1, 1, 1]))
    assert few.auroc == 1.0 and few.pairs == 3
    assert few.low < 0.5
    # 6 x 18 = 108 pairs, all in order: a narrow interval near 1
    labels = np.array([0] * 6 + [1] * 18)
    many = auroc_with_interval(labels + np.linspace(0, 0.5, 24), labels)
    assert many.auroc == 1.0 and 0.9 < many.low < 1.0
    # and the same at the other end: a perfectly reversed ranking
    assert auroc_with_interval(-(labels + np.linspace(0, 0.5, 24)), labels).high < 0.1


def test_verdict_keeps_an_uncertain_model_and_rejects_a_reversed_one():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 6 + [1] * 18)
    healthy = np.concatenate([rng.normal(0, 1, 6), rng.normal(2, 1, 18)])
    assert judge_validation(_images(healthy, labels)).problem is None
    # a weak model: AUROC near chance, but the interval reaches above it: kept
    weak = np.concatenate([rng.normal(0, 1, 6), rng.normal(0.1, 1, 18)])
    verdict = judge_validation(_images(weak, labels))
    assert verdict.problem is None and verdict.interval.low < 0.5 < verdict.interval.high
    # negated scores: the whole interval under chance
    reversed_ = judge_validation(_images(-healthy, labels))
    assert reversed_.problem and "below chance" in reversed_.problem
    assert reversed_.interval.high < 0.5


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([1.0] * 8, "all 8 validation scores are 1.0"), ([0, 1, np.nan, 3] * 2, "not finite")],
)
def test_verdict_rejects_constant_and_non_finite_scores(scores, expected):
    verdict = judge_validation(_images(scores, [0, 0, 1, 1] * 2))
    assert verdict.problem and expected in verdict.problem


def test_pixel_metrics_on_raw_maps():
    maps = np.zeros((2, 8, 8), np.float32) + 50.0
    masks = np.zeros((2, 8, 8), bool)
    maps[0, 2:4, 2:4], masks[0, 2:4, 2:4] = 80.0, True
    result = pixel_metrics(maps, masks, threshold=60.0)
    assert result["pixel_auroc"] == 1.0 and result["pixel_f1"] == 1.0
    assert result["aupro"] == pytest.approx(1.0, abs=1e-3)
    assert pixel_metrics(maps, np.zeros_like(masks), 60.0)["pixel_auroc"] is None


def test_overlay_scale_leaves_normal_texture_clear_and_lights_the_defect():
    rng = np.random.default_rng(2)
    good = [rng.normal(30, 1, (16, 16)).astype(np.float32) for _ in range(3)]
    bad = rng.normal(30, 1, (16, 16)).astype(np.float32)
    bad[4:8, 4:8] += 10
    images = [ScoredImage("g.png", 0, "good", 0.0, g, None) for g in good]
    images.append(ScoredImage("b.png", 1, "x", 1.0, bad, None))
    heat = overlay_heat(bad, overlay_range(images))
    assert heat[4:8, 4:8].min() > 0.5
    outside = np.ones_like(heat, bool)
    outside[4:8, 4:8] = False
    assert np.median(heat[outside]) == 0.0
