"""Recall-first operating points on hand-made score sets with ties."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from tasks.stats.recall import (
    fpr_at_full_recall,
    operating_point,
    recall_at_fpr,
    recall_first_metrics,
)

# 8 good, 12 defective, like the demo's test split
GOOD = [0.10, 0.20, 0.30, 0.40, 0.50, 0.55, 0.60, 0.70]
DEFECTS = [0.50, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95]
SCORES = np.array(GOOD + DEFECTS)
LABELS = np.array([0] * 8 + [1] * 12)


def test_fpr_at_full_recall_counts_good_images_tied_with_the_lowest_defect():
    # the lowest defect scores 0.50; goods at 0.50, 0.55, 0.60 and 0.70 are at or above it
    assert fpr_at_full_recall(SCORES, LABELS) == 4 / 8
    metrics = recall_first_metrics(SCORES, LABELS)
    assert metrics.full_recall_threshold == 0.50


def test_fpr_at_full_recall_is_zero_on_a_perfect_split_and_one_when_a_defect_is_lowest():
    assert fpr_at_full_recall(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 0.0
    assert fpr_at_full_recall(np.array([0.1, 0.2, 0.05, 0.9]), np.array([0, 0, 1, 1])) == 1.0


def test_operating_point_flags_scores_at_or_above_the_threshold():
    point = operating_point(SCORES, LABELS, 0.70)
    assert point.recall == 10 / 12  # all but 0.50 and 0.65: the defect tied at 0.70 counts
    assert point.fpr == 1 / 8  # the good image tied at 0.70 is flagged


def test_recall_at_fpr_allows_no_false_positive_with_eight_good_images():
    # 1 % and 5 % of 8 good images is less than one image: threshold above every good one
    one, five = recall_at_fpr(SCORES, LABELS, 0.01), recall_at_fpr(SCORES, LABELS, 0.05)
    assert one == five
    assert one.fpr == 0.0
    assert one.threshold == 0.75  # 0.70 would flag the good image tied there
    assert one.recall == 9 / 12
    # 1/8 = 12.5 % allows the good image at 0.70, and with it the defects at 0.70
    wider = recall_at_fpr(SCORES, LABELS, 0.125)
    assert (wider.threshold, wider.recall, wider.fpr) == (0.65, 11 / 12, 1 / 8)


def test_recall_at_fpr_agrees_with_sklearns_roc_curve_on_a_large_set():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=2000)
    scores = np.round(rng.normal(labels * 1.5), 2)
    fpr, tpr, _ = roc_curve(labels, scores)
    for limit in (0.01, 0.05, 0.2):
        point = recall_at_fpr(scores, labels, limit)
        assert point.recall == pytest.approx(tpr[fpr <= limit].max(), abs=1e-12)
        assert point.fpr <= limit


def test_recall_at_fpr_can_be_zero():
    # the highest score is a good image's: no threshold with FPR 0 catches any defect
    scores, labels = np.array([0.9, 0.1, 0.5, 0.6]), np.array([0, 0, 1, 1])
    point = recall_at_fpr(scores, labels, 0.0)
    assert (point.recall, point.fpr, point.threshold) == (0.0, 0.0, np.inf)


def test_recall_first_metrics_uses_the_validation_threshold_when_given():
    metrics = recall_first_metrics(SCORES, LABELS, threshold=0.52)
    assert metrics.at_threshold is not None
    assert (metrics.at_threshold.recall, metrics.at_threshold.fpr) == (11 / 12, 3 / 8)
    assert recall_first_metrics(SCORES, LABELS).at_threshold is None
    assert recall_first_metrics(SCORES, LABELS, threshold=float("nan")).at_threshold is None


def test_bad_input():
    with pytest.raises(ValueError, match="good and anomalous"):
        fpr_at_full_recall(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="not finite"):
        recall_at_fpr(np.array([0.1, np.inf]), np.array([0, 1]), 0.05)
    with pytest.raises(ValueError, match="max_fpr"):
        recall_at_fpr(SCORES, LABELS, 5)
