"""Friedman, Iman-Davenport and Nemenyi against Demšar (2006) section 3.2.2 and scipy;
the critical-difference diagram's SVG."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy.stats import friedmanchisquare

from tasks.stats.cd_diagram import critical_difference_svg
from tasks.stats.ranking import friedman_nemenyi, nemenyi_critical_difference, nemenyi_q

# Demšar (2006), Table 6: AUC of C4.5 with and without m and cf tuning on 14 data sets
MODELS = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
TABLE_6 = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],  # adult (sample)
        [0.599, 0.591, 0.590, 0.569],  # breast cancer
        [0.954, 0.971, 0.968, 0.967],  # breast cancer wisconsin
        [0.628, 0.661, 0.654, 0.657],  # cmc
        [0.882, 0.888, 0.886, 0.898],  # ionosphere
        [0.936, 0.931, 0.916, 0.931],  # iris
        [0.661, 0.668, 0.609, 0.685],  # liver disorders
        [0.583, 0.583, 0.563, 0.625],  # lung cancer
        [0.775, 0.838, 0.866, 0.875],  # lymphography
        [1.000, 1.000, 1.000, 1.000],  # mushroom
        [0.940, 0.962, 0.965, 0.962],  # primary tumor
        [0.619, 0.666, 0.614, 0.669],  # rheum
        [0.972, 0.981, 0.975, 0.975],  # voting
        [0.957, 0.978, 0.946, 0.970],  # wine
    ]
)
# The paper ranks voting's two printed 0.975s apart (C4.5+cf 2nd, C4.5+m+cf 3rd): its
# unrounded values differ. Breaking that one printed tie the same way gives its figures.
PAPER_RANKED = TABLE_6.copy()
PAPER_RANKED[12, 2] = 0.9751


@pytest.mark.parametrize(
    "k, q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (8, 3.031), (10, 3.164)]
)
def test_q_alpha_matches_demsar_table_5a(k, q):
    assert nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_q_alpha_at_ten_percent():
    assert nemenyi_q(4, alpha=0.10) == pytest.approx(2.291, abs=1e-3)


def test_demsar_worked_example():
    result = friedman_nemenyi(PAPER_RANKED, MODELS, tie_correction=False)
    assert [round(r, 3) for r in result.mean_ranks] == [3.143, 2.000, 2.893, 1.964]
    assert result.chi2 == pytest.approx(9.28, abs=5e-3)
    assert result.f == pytest.approx(3.69, abs=5e-3)
    assert result.significant  # F(3, 39) critical value 2.85 < 3.69
    assert result.critical_difference == pytest.approx(1.25, abs=5e-3)
    # "even the difference between the best and the worst is smaller than CD" at 0.05
    assert not result.differ("C4.5", "C4.5+m+cf")
    assert result.cliques() == [("C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5")]
    # at 0.10: CD 1.12; C4.5 is worse than C4.5+m and C4.5+m+cf, C4.5+cf in both groups
    ten = friedman_nemenyi(PAPER_RANKED, MODELS, alpha=0.10, tie_correction=False)
    assert ten.critical_difference == pytest.approx(1.12, abs=5e-3)
    assert ten.differ("C4.5", "C4.5+m") and ten.differ("C4.5", "C4.5+m+cf")
    assert not ten.differ("C4.5", "C4.5+cf")
    assert ten.cliques() == [("C4.5+m+cf", "C4.5+m", "C4.5+cf"), ("C4.5+cf", "C4.5")]


def test_printed_table_ranks_ties_with_their_mean_rank():
    result = friedman_nemenyi(TABLE_6, MODELS, tie_correction=False)
    # voting's tie shares ranks 2.5 and 2.5 instead of the paper's 2 and 3
    assert result.mean_ranks[2] == pytest.approx(41 / 14)
    assert result.mean_ranks[3] == pytest.approx(27 / 14)
    assert sum(result.mean_ranks) == pytest.approx(10.0)  # k (k + 1) / 2


@pytest.mark.parametrize("table", [TABLE_6, PAPER_RANKED])
def test_tie_corrected_statistic_matches_scipy(table):
    result = friedman_nemenyi(table, MODELS)
    expected = friedmanchisquare(*table.T)
    assert result.chi2 == pytest.approx(expected.statistic, rel=1e-12)
    assert result.chi2_p == pytest.approx(expected.pvalue, rel=1e-9)
    n, k = table.shape
    assert result.f == pytest.approx((n - 1) * result.chi2 / (n * (k - 1) - result.chi2))


def test_lower_is_better_reverses_the_ranks():
    high = friedman_nemenyi(TABLE_6, MODELS)
    low = friedman_nemenyi(-TABLE_6, MODELS, higher_is_better=False)
    assert low.mean_ranks == pytest.approx(high.mean_ranks)


def test_every_category_a_complete_tie_is_no_evidence():
    result = friedman_nemenyi(np.ones((5, 3)), ["a", "b", "c"])
    assert result.chi2 == 0.0 and result.chi2_p == 1.0 and not result.significant
    assert result.mean_ranks == (2.0, 2.0, 2.0)
    assert result.cliques() == [("a", "b", "c")]


def test_consistent_ranking_is_significant_and_splits_apart():
    table = np.tile([0.99, 0.9, 0.8], (40, 1))
    result = friedman_nemenyi(table, ["a", "b", "c"])
    assert result.mean_ranks == (1.0, 2.0, 3.0)
    assert math.isinf(result.f) and result.f_p == 0.0 and result.significant
    assert result.cliques() == []
    assert result.critical_difference == pytest.approx(nemenyi_critical_difference(3, 40))


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="finite"):
        friedman_nemenyi(np.array([[0.9, np.nan], [0.8, 0.7]]), ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 categories"):
        friedman_nemenyi(np.array([[0.9, 0.8]]), ["a", "b"])
    with pytest.raises(ValueError, match="3 models"):
        friedman_nemenyi(np.array([[0.9, 0.8], [0.7, 0.6]]), ["a", "b", "c"])


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(t.itertext()).strip() for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_cd_diagram_is_self_contained_svg_with_text_as_text():
    result = friedman_nemenyi(PAPER_RANKED, MODELS, alpha=0.10, tie_correction=False)
    svg = critical_difference_svg(result, title="AUC, 14 data sets")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<script" not in svg and 'xlink:href="http' not in svg and "<image" not in svg
    texts = svg_texts(svg)
    for name, rank in zip(MODELS, result.mean_ranks, strict=True):
        assert f"{name} ({rank:.2f})" in texts
    assert "CD = 1.12" in texts and "AUC, 14 data sets" in texts
    assert [t for t in texts if t in {"1", "2", "3", "4"}] == ["1", "2", "3", "4"]
    assert critical_difference_svg(result, title="AUC, 14 data sets") == svg  # deterministic


def test_cd_diagram_draws_one_bar_per_clique():
    # the bars are the only thick (3 pt) lines
    one = critical_difference_svg(friedman_nemenyi(PAPER_RANKED, MODELS, tie_correction=False))
    two = critical_difference_svg(
        friedman_nemenyi(PAPER_RANKED, MODELS, alpha=0.10, tie_correction=False)
    )
    assert one.count("stroke-width: 3") == 1 and two.count("stroke-width: 3") == 2


def test_cd_diagram_up_to_eight_models():
    rng = np.random.default_rng(3)
    names = [f"model_with_a_long_name_{i}" for i in range(8)]
    result = friedman_nemenyi(rng.normal(size=(12, 8)) + np.arange(8), names)
    texts = svg_texts(critical_difference_svg(result))
    assert sum(t.startswith("model_with_a_long_name_") for t in texts) == 8
    with pytest.raises(ValueError, match="up to 8"):
        critical_difference_svg(friedman_nemenyi(rng.normal(size=(12, 9)), list("abcdefghi")))
