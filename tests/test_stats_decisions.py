"""Seeds, regression judgements and the per-category recommendation."""

import numpy as np
import pytest

from tasks.stats.delong import paired_delong_test
from tasks.stats.image_scores import ImageScores
from tasks.stats.recommendation import Candidate, compare_rejections, mcnemar_exact, recommend
from tasks.stats.regression import INTERVAL, PAIRED, judge_regression
from tasks.stats.seeds import summarise_seeds

# --- seeds


def test_seed_summary_mean_and_sample_sd():
    summary = summarise_seeds([0.90, 0.94, 0.98])
    assert summary.mean == pytest.approx(0.94)
    assert summary.sd == pytest.approx(0.04)  # n - 1 in the denominator, not n
    assert summary.n == 3
    assert str(summary) == "0.940 ± 0.040 (3 seeds)"


def test_one_seed_has_no_spread_rather_than_zero():
    summary = summarise_seeds([0.9])
    assert summary.sd is None and summary.n == 1
    assert summary.format(2) == "0.90 (1 seed, no spread)"


def test_seed_values_must_be_finite():
    with pytest.raises(ValueError, match="not finite"):
        summarise_seeds([0.9, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        summarise_seeds([])


# --- score sets


def split(scores, n_good=8, prefix="img"):
    labels = np.array([0] * n_good + [1] * (len(scores) - n_good))
    paths = tuple(f"{prefix}{i:03d}.png" for i in range(len(scores)))
    return ImageScores(paths, labels, np.asarray(scores, dtype=np.float64))


def test_image_scores_check_their_input():
    with pytest.raises(ValueError, match="once"):
        ImageScores(("a", "a"), np.array([0, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="not finite, e.g. b"):
        ImageScores(("a", "b"), np.array([0, 1]), np.array([0.1, np.nan]))
    rows = [
        {"path": "b", "label": 1, "defect_type": "crack", "score": 0.9},
        {"path": "a", "label": 0, "defect_type": "good", "score": 0.1},
    ]
    scores = ImageScores.from_rows(rows)
    assert scores.defect_types == ("crack", "good") and scores.n_anomalous == 1
    other = ImageScores(("a", "b"), np.array([0, 1]), np.array([0.3, 0.4]))
    assert scores.same_images(other)
    assert scores.aligned_to(other).scores.tolist() == [0.1, 0.9]
    relabelled = ImageScores(("a", "b"), np.array([1, 0]), np.array([0.3, 0.4]))
    assert not scores.same_images(relabelled)


# --- regression

RNG = np.random.default_rng(11)
BASE = np.concatenate([RNG.uniform(0, 0.5, 8), RNG.uniform(0.55, 1.0, 12)])  # AUROC 1


def test_same_images_are_judged_by_the_paired_test():
    previous = split(BASE)
    worse = BASE.copy()
    worse[8:16] = -np.arange(8) / 10  # eight of twelve defects below every good image
    verdict = judge_regression(split(worse), previous)
    assert verdict.judged_by == PAIRED and verdict.regressed
    assert verdict.difference < 0 and verdict.p_value < 0.05
    assert verdict.interval[1] < 0  # the difference's 95 % interval lies below 0
    expected = paired_delong_test(worse, BASE, previous.labels)
    assert verdict.p_value == pytest.approx(expected.p_value)
    assert "paired DeLong" in verdict.reason


def test_paired_judgement_lines_images_up_by_path():
    previous = split(BASE)
    order = np.random.default_rng(0).permutation(20)
    shuffled = ImageScores(
        tuple(previous.paths[i] for i in order), previous.labels[order], previous.scores[order]
    )
    verdict = judge_regression(shuffled, previous)
    assert verdict.judged_by == PAIRED
    assert verdict.difference == 0.0 and verdict.p_value == 1.0 and not verdict.regressed


def test_one_pair_lost_on_twenty_images_is_not_a_regression():
    one_swap = BASE.copy()
    one_swap[8] = BASE[:8].max() - 0.01  # one defect just below the top good image
    verdict = judge_regression(split(one_swap), split(BASE))
    assert verdict.judged_by == PAIRED
    assert verdict.difference == pytest.approx(-1 / 96)
    assert not verdict.regressed and verdict.p_value > 0.05


def test_a_rise_is_never_a_regression():
    previous = BASE.copy()
    previous[8:16] = -np.arange(8) / 10
    verdict = judge_regression(split(BASE), split(previous))
    assert verdict.difference > 0 and verdict.p_value < 0.05 and not verdict.regressed


def test_different_images_are_judged_against_the_previous_interval():
    previous = split(BASE, prefix="old")
    now = BASE.copy()
    now[8:11] = [0.05, 0.1, 0.15]
    verdict = judge_regression(split(now, prefix="new"), previous)
    assert verdict.judged_by == INTERVAL and verdict.p_value is None
    # previous AUROC 1.0: its interval is Hanley-McNeil's, about [0.97, 1]
    low, high = verdict.interval
    assert 0.95 < low < 0.99 and high == 1.0
    assert verdict.auroc < low and verdict.regressed
    assert "hanley-mcneil" in verdict.reason
    inside = BASE.copy()
    inside[8] = BASE[:8].max() - 0.01
    assert not judge_regression(split(inside, prefix="new"), previous).regressed


def test_a_rise_above_the_previous_interval_is_not_a_regression():
    weaker = BASE.copy()
    weaker[8:16] = -np.arange(8) / 10
    verdict = judge_regression(split(BASE, prefix="new"), split(weaker, prefix="old"))
    assert verdict.judged_by == INTERVAL
    assert verdict.auroc > verdict.interval[1] and not verdict.regressed


def test_relabelled_images_are_not_the_same_images():
    previous = split(BASE)
    labels = previous.labels.copy()
    labels[0] = 1
    relabelled = ImageScores(previous.paths, labels, previous.scores)
    assert judge_regression(relabelled, previous).judged_by == INTERVAL


# --- recommendation


def candidate(model, path, good, defects, ips, hardware="Xeon"):
    scores = split(list(good) + list(defects), n_good=len(good))
    return Candidate(model, path, scores, ips, hardware)


GOOD_RANKS = np.linspace(0.1, 0.5, 20)
DEFECTS = np.linspace(0.6, 1.0, 12)


def with_rejections(count):
    """20 good images of which the last `count` score above every defect."""
    good = GOOD_RANKS.copy()
    good[20 - count :] = 1.5
    return good


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(2, 0) == pytest.approx(0.5)  # 2 * 0.5^2
    assert mcnemar_exact(6, 0) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(7, 1) == pytest.approx(2 * 9 / 256)  # 2 * P(X <= 1), n = 8


def test_lowest_fpr_among_fast_enough_wins_and_slow_ones_are_named():
    best = candidate("patchcore", "openvino-int8", with_rejections(0), DEFECTS, 45.0)
    worse = candidate("efficient_ad", "torch-fp32", with_rejections(8), DEFECTS, 120.0)
    slow = candidate("patchcore", "torch-fp32", with_rejections(0), DEFECTS, 12.0)
    result = recommend("grid", [best, worse, slow], min_ips=30)
    assert result.pick is best and result.warning is None and result.hardware == "Xeon"
    assert compare_rejections(worse, best) == pytest.approx(2 * 0.5**8)
    reasons = {r.candidate.name: r.reason for r in result.runners_up}
    assert reasons["patchcore / torch-fp32"] == "slower than 30 img/s (12.0 img/s at batch 1)"
    assert reasons["efficient_ad / torch-fp32"].startswith(
        "FPR at 100 % recall 0.400 vs 0.000 (patchcore / openvino-int8), significant"
    )
    assert "lowest FPR at 100 % recall (0.000)" in result.reason


def test_no_significant_difference_takes_the_faster():
    best = candidate("patchcore", "openvino-int8", with_rejections(0), DEFECTS, 45.0)
    close = candidate("efficient_ad", "openvino-int8", with_rejections(2), DEFECTS, 140.0)
    result = recommend("leather", [best, close], min_ips=30)
    assert result.pick is close
    assert "not significantly worse than patchcore / openvino-int8's 0.000" in result.reason
    (runner,) = result.runners_up
    assert runner.candidate is best and runner.p_value == pytest.approx(0.5)
    assert "does not differ significantly and is faster (140.0 img/s vs 45.0 img/s)" in (
        runner.reason
    )


def test_tied_and_slower_runner_up():
    best = candidate("patchcore", "openvino-int8", with_rejections(1), DEFECTS, 100.0)
    tied = candidate("padim", "torch-fp32", with_rejections(2), DEFECTS, 60.0)
    result = recommend("grid", [tied, best], min_ips=30)
    assert result.pick is best
    (runner,) = result.runners_up
    assert runner.reason.startswith("tied on FPR at 100 % recall (0.100 vs 0.050")
    assert runner.reason.endswith("slower (60.0 img/s vs 100.0 img/s)")


def test_nothing_fast_enough_recommends_nothing_and_names_the_fastest():
    a = candidate("patchcore", "torch-fp32", with_rejections(0), DEFECTS, 12.5)
    b = candidate("efficient_ad", "torch-fp32", with_rejections(0), DEFECTS, None)
    result = recommend("grid", [a, b], min_ips=30)
    assert result.pick is None and result.hardware is None
    assert result.warning == (
        "No candidate reaches 30 img/s at batch 1; the fastest is patchcore / torch-fp32 "
        "at 12.5 img/s on Xeon."
    )
    assert [r.reason for r in result.runners_up] == [
        "slower than 30 img/s (12.5 img/s at batch 1)",
        "no batch-1 throughput measured",
    ]


def test_mixed_hardware_is_flagged_and_other_images_are_refused():
    a = candidate("patchcore", "torch-fp32", with_rejections(0), DEFECTS, 50.0, "Xeon")
    b = candidate("patchcore", "tensorrt-fp16", with_rejections(0), DEFECTS, 900.0, "H200")
    result = recommend("grid", [a, b], min_ips=30)
    assert result.pick is b and "different hardware (H200, Xeon)" in result.warning
    other = Candidate("x", "y", split(list(GOOD_RANKS) + list(DEFECTS), 20, "other"), 50.0, "Xeon")
    with pytest.raises(ValueError, match="same test images"):
        recommend("grid", [a, other], min_ips=30)
