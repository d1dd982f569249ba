"""DeLong's AUROC variance, interval and tests against R's pROC and against first principles.

tests/fixtures/proc_reference.json was written by tests/fixtures/make_proc_reference.R
(its R and pROC versions are inside it). The pROC test-suite figures below are copied
from pROC's own tests (tests/testthat/test-roc.test.R in github.com/xrobin/pROC), a
second source that does not depend on that script.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.stats.delong import (
    METHOD_DELONG,
    METHOD_HANLEY_MCNEIL,
    auroc_interval,
    delong_interval,
    delong_variance,
    hanley_mcneil_variance,
    minimum_detectable_difference,
    paired_delong_test,
    per_defect_type_auroc,
    placements,
    planned_detectable_difference,
    unpaired_delong_test,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "proc_reference.json").read_text())
PAIRED = {case["name"]: case for case in FIXTURE["paired"]}
UNPAIRED = {case["name"]: case for case in FIXTURE["unpaired"]}
TOL = 1e-9


def arrays(case, *keys):
    return [np.array(case[k], dtype=np.float64) for k in keys]


def test_fixture_records_where_it_came_from():
    assert FIXTURE["generator"] == "tests/fixtures/make_proc_reference.R"
    assert (Path(__file__).parent / "fixtures" / "make_proc_reference.R").exists()
    assert FIXTURE["proc_version"] and FIXTURE["r_version"].startswith("R version")
    assert 'direction = "<"' in FIXTURE["roc_call"]
    assert len(PAIRED) >= 10 and len(UNPAIRED) >= 5


@pytest.mark.parametrize("name", sorted(PAIRED))
def test_auroc_and_variance_match_proc(name):
    case = PAIRED[name]
    labels, a, b = arrays(case, "labels", "scores_a", "scores_b")
    for scores, ref in ((a, case["roc_a"]), (b, case["roc_b"])):
        auroc, variance = delong_variance(scores, labels)
        assert auroc == pytest.approx(ref["auc"], abs=TOL)
        assert variance == pytest.approx(ref["var"], abs=TOL)
        assert auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        for level, key in ((0.95, "ci95"), (0.90, "ci90")):
            low, high = delong_interval(auroc, variance, level)
            assert (low, high) == pytest.approx((ref[key][0], ref[key][2]), abs=TOL)


@pytest.mark.parametrize("name", sorted(PAIRED))
def test_paired_test_matches_proc_roc_test(name):
    case = PAIRED[name]
    labels, a, b = arrays(case, "labels", "scores_a", "scores_b")
    ref = case["paired"]
    result = paired_delong_test(a, b, labels)
    assert result.paired and result.df is None
    assert result.difference == pytest.approx(ref["difference"], abs=TOL)
    assert result.se == pytest.approx(ref["se"], abs=TOL)
    if math.isinf(ref["z"]):
        assert result.statistic == ref["z"]
    else:
        assert result.statistic == pytest.approx(ref["z"], abs=TOL)
    assert result.p_value == pytest.approx(ref["p"], abs=TOL)
    # pROC does not clip the difference's interval; ours stays within [-1, 1]
    expected = np.clip(ref["ci95"], -1, 1)
    assert (result.low, result.high) == pytest.approx(tuple(expected), abs=TOL)


@pytest.mark.parametrize("name", sorted(UNPAIRED))
def test_unpaired_test_matches_proc_roc_test(name):
    case = UNPAIRED[name]
    la, a, lb, b = arrays(case, "labels_a", "scores_a", "labels_b", "scores_b")
    ref = case["unpaired"]
    result = unpaired_delong_test(a, la, b, lb)
    assert not result.paired
    assert result.auroc_a == pytest.approx(case["roc_a"]["auc"], abs=TOL)
    assert result.auroc_b == pytest.approx(case["roc_b"]["auc"], abs=TOL)
    assert result.statistic == pytest.approx(ref["t"], abs=TOL)
    assert result.df == pytest.approx(ref["df"], abs=1e-7)
    assert result.p_value == pytest.approx(ref["p"], abs=TOL)
    assert result.low < result.difference < result.high


# pROC's own expectations (tests/testthat/test-roc.test.R): t1..t3 paired, t1up..t3up not
PROC_SUITE_PAIRED = {
    "asah_wfns_s100b": (
        2.20898359144091,
        0.0271757822291882,
        0.0104061769564846,
        0.174214419249478,
    ),
    "asah_wfns_ndka": (
        2.79777591868904,
        0.00514557970691098,
        0.0634011709339876,
        0.3600405634833566,
    ),
    "asah_ndka_s100b": (
        -1.39077002573558,
        0.164295175223054,
        -0.2876917446341914,
        0.0488706064228094,
    ),
}
PROC_SUITE_UNPAIRED = {
    "asah_wfns_s100b": (1.43490640926908, 0.152825378808796),
    "asah_wfns_ndka": (3.10125096778969, 0.00220950791756457),
    "asah_ndka_s100b": (-1.55995743389685, 0.120192832430845),
}


@pytest.mark.parametrize("name", sorted(PROC_SUITE_PAIRED))
def test_paired_test_matches_procs_own_test_suite_on_asah(name):
    labels, a, b = arrays(PAIRED[name], "labels", "scores_a", "scores_b")
    z, p, low, high = PROC_SUITE_PAIRED[name]
    result = paired_delong_test(a, b, labels)
    assert (result.statistic, result.p_value, result.low, result.high) == pytest.approx(
        (z, p, low, high), abs=1e-12
    )
    swapped = paired_delong_test(b, a, labels)
    assert swapped.statistic == pytest.approx(-z, abs=1e-12)
    assert swapped.p_value == pytest.approx(p, abs=1e-12)


@pytest.mark.parametrize("name", sorted(PROC_SUITE_UNPAIRED))
def test_unpaired_test_matches_procs_own_test_suite_on_asah(name):
    la, a, lb, b = arrays(UNPAIRED[name], "labels_a", "scores_a", "labels_b", "scores_b")
    d, p = PROC_SUITE_UNPAIRED[name]
    result = unpaired_delong_test(a, la, b, lb)
    assert (result.statistic, result.p_value) == pytest.approx((d, p), abs=1e-12)


def test_asah_s100b_matches_procs_documented_auc_and_ci():
    # pROC's documentation prints AUC 0.7314, 95% CI 0.6301-0.8326 (DeLong) for s100b
    labels, s100b = arrays(PAIRED["asah_wfns_s100b"], "labels", "scores_b")
    interval = auroc_interval(s100b, labels)
    assert interval.method == METHOD_DELONG
    assert (round(interval.auroc, 4), round(interval.low, 4), round(interval.high, 4)) == (
        0.7314,
        0.6301,
        0.8326,
    )


def brute_force(scores, labels):
    """DeLong 1988 by its definition: O(n0 n1) kernel, sample covariances."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10, v01


def test_fast_placements_equal_the_definition_with_ties():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(labels * 0.8), 1)  # many ties
    auroc, v10, v01 = brute_force(scores, labels)
    case_p, control_p = placements(scores, labels)
    np.testing.assert_allclose(case_p[0], v10, atol=1e-12)
    np.testing.assert_allclose(control_p[0], v01, atol=1e-12)
    _, variance = delong_variance(scores, labels)
    expected = np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size
    assert variance == pytest.approx(expected, abs=1e-14)
    assert auroc_interval(scores, labels).auroc == pytest.approx(auroc, abs=1e-12)


def test_paired_covariance_term_matters():
    # Two strongly correlated models: the paired SE must be far below the independent one.
    case = PAIRED["asah_wfns_ndka"]
    labels, a, b = arrays(case, "labels", "scores_a", "scores_b")
    paired = paired_delong_test(a, a + 0.01 * b, labels)
    independent = math.sqrt(
        delong_variance(a, labels)[1] + delong_variance(a + 0.01 * b, labels)[1]
    )
    assert paired.se < 0.5 * independent


def test_perfect_split_falls_back_to_hanley_mcneil_not_a_point():
    labels = np.array([0] * 8 + [1] * 12)
    scores = np.concatenate([np.linspace(0, 0.4, 8), np.linspace(0.6, 1, 12)])
    auroc, variance = delong_variance(scores, labels)
    assert (auroc, variance) == (1.0, 0.0)
    assert delong_interval(auroc, variance) == (1.0, 1.0)  # pROC's degenerate interval
    interval = auroc_interval(scores, labels)
    assert interval.method == METHOD_HANLEY_MCNEIL
    assert interval.auroc == 1.0 and interval.high == 1.0
    # Hanley-McNeil at a = 97/98 on 8 x 12 pairs, worked by hand:
    a = 97 / 98
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    hand = (a * (1 - a) + 11 * (q1 - a * a) + 7 * (q2 - a * a)) / 96
    assert interval.variance == pytest.approx(hand, rel=1e-12)
    assert interval.low == pytest.approx(1 - 1.959963984540054 * math.sqrt(hand), abs=1e-12)
    assert 0.9 < interval.low < 0.99
    # the interval is wider than that of the same split with one pair wrong
    one_wrong = scores.copy()
    one_wrong[8] = 0.39  # a defect just below the best-scoring good image
    nearly = auroc_interval(one_wrong, labels)
    assert nearly.method == METHOD_DELONG
    assert nearly.auroc == pytest.approx(95 / 96)
    assert nearly.contains(nearly.auroc)


def test_fallback_covers_all_tied_and_single_image_classes():
    tied = auroc_interval(np.full(6, 0.5), np.array([0, 0, 0, 1, 1, 1]))
    assert tied.auroc == 0.5 and tied.method == METHOD_HANLEY_MCNEIL
    assert tied.low < 0.2 and tied.high > 0.8
    single = auroc_interval(np.array([0.1, 0.2, 0.3, 0.25]), np.array([0, 0, 0, 1]))
    assert single.method == METHOD_HANLEY_MCNEIL and single.n_anomalous == 1
    assert single.auroc == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least 2 good and 2 anomalous"):
        delong_variance(np.array([0.1, 0.2, 0.3, 0.25]), np.array([0, 0, 0, 1]))


def test_hanley_mcneil_is_symmetric_under_a_flipped_score():
    assert hanley_mcneil_variance(0.2, 10, 15) == pytest.approx(hanley_mcneil_variance(0.8, 10, 15))


def test_interval_level_and_clipping():
    labels, s100b = arrays(PAIRED["asah_wfns_s100b"], "labels", "scores_b")
    wide, narrow = auroc_interval(s100b, labels, 0.99), auroc_interval(s100b, labels, 0.8)
    assert wide.low < narrow.low < narrow.high < wide.high
    near_one = auroc_interval(
        np.array([0.1, 0.2, 0.35, 0.3, 0.9, 0.95]), np.array([0, 0, 0, 1, 1, 1])
    )
    assert near_one.high <= 1.0
    with pytest.raises(ValueError, match="level"):
        auroc_interval(s100b, labels, 1.5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not finite"):
        auroc_interval(np.array([0.1, np.nan, 0.3, 0.4]), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        auroc_interval(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 2, 1]))
    with pytest.raises(ValueError, match="0 anomalous"):
        auroc_interval(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="same images"):
        paired_delong_test(np.zeros(4), np.zeros(5), np.array([0, 0, 1, 1]))


def test_per_defect_type_auroc_uses_all_good_images():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    types = ["good"] * 4 + ["crack", "crack", "hole", "hole", "hole"]
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.35, 0.05, 0.6])
    result = per_defect_type_auroc(scores, labels, types)
    assert list(result) == ["crack", "hole"]
    assert result["crack"].auroc == 1.0 and result["crack"].method == METHOD_HANLEY_MCNEIL
    # hole: 0.35 beats 3 of 4 goods, 0.05 none, 0.6 all four -> 7 / 12
    assert result["hole"].auroc == pytest.approx(7 / 12)
    assert result["hole"].n_normal == 4 and result["hole"].n_anomalous == 3
    hole = np.array([True] * 4 + [False, False, True, True, True])
    assert result["hole"].auroc == pytest.approx(roc_auc_score(labels[hole], scores[hole]))


def test_minimum_detectable_difference_from_the_observed_se():
    labels, a, b = arrays(PAIRED["asah_wfns_s100b"], "labels", "scores_a", "scores_b")
    comparison = paired_delong_test(a, b, labels)
    detectable = minimum_detectable_difference(comparison)
    assert detectable.se_source == "delong"
    # (z_0.975 + z_0.8) * se = (1.959964 + 0.841621) * se
    assert detectable.difference == pytest.approx(2.8015852 * comparison.se, rel=1e-7)
    stricter = minimum_detectable_difference(comparison, alpha=0.01, power=0.9)
    assert stricter.difference > detectable.difference


def test_minimum_detectable_difference_falls_back_when_both_curves_are_perfect():
    case = PAIRED["demo_8x12_both_perfect"]
    labels, a, b = arrays(case, "labels", "scores_a", "scores_b")
    comparison = paired_delong_test(a, b, labels)
    assert comparison.degenerate and comparison.p_value == 1.0
    detectable = minimum_detectable_difference(comparison)
    assert detectable.se_source == "hanley-mcneil"
    planned = planned_detectable_difference(8, 12, 1.0)
    assert detectable.difference == pytest.approx(planned.difference)
    assert detectable.se == pytest.approx(math.sqrt(2 * hanley_mcneil_variance(1.0, 8, 12)))
    # more images, smaller detectable difference
    assert planned_detectable_difference(80, 120, 1.0).difference < planned.difference
    with pytest.raises(ValueError, match="paired"):
        la, sa, lb, sb = arrays(
            UNPAIRED["demo_8x12_vs_15x10"], "labels_a", "scores_a", "labels_b", "scores_b"
        )
        minimum_detectable_difference(unpaired_delong_test(sa, la, sb, lb))
