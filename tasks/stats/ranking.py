"""Which model is better over all categories: Friedman's test and Nemenyi's post-hoc test.

Demšar (2006), "Statistical comparisons of classifiers over multiple data sets", Journal of
Machine Learning Research 7, section 3.2.2: rank the k models within each of N categories
(1 = best, ties share their mean rank), test whether the mean ranks differ with Friedman's
(1937) chi-square or Iman & Davenport's (1980) F, and call two models different when their
mean ranks differ by at least Nemenyi's (1963) critical difference

    CD = q_alpha * sqrt(k (k + 1) / (6 N)),
    q_alpha = studentized_range.ppf(1 - alpha, k, inf) / sqrt(2).

The statistic carries the usual correction for tied ranks (as scipy's
`friedmanchisquare`); many categories where every model reaches an AUROC of 1.0 are ties.

Example:
    >>> result = friedman_nemenyi(np.array([[0.9, 0.8], [0.95, 0.7], [1.0, 0.9]]), ["a", "b"])
    >>> result.mean_ranks
    (1.0, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, f, rankdata, studentized_range


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi's q_alpha for k models: the studentized range's 1 - alpha quantile (infinite
    degrees of freedom) over sqrt(2); Demšar's Table 5a."""
    if k < 2:
        raise ValueError(f"Nemenyi's test needs at least 2 models, got {k}")
    return float(studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """The mean-rank difference at which two of k models over n categories differ."""
    if n < 1:
        raise ValueError(f"needs at least one category, got {n}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


@dataclass(frozen=True)
class FriedmanResult:
    """Mean ranks (1 = best) of `models` over `n_categories`, and the tests on them."""

    models: tuple[str, ...]
    mean_ranks: tuple[float, ...]
    n_categories: int
    chi2: float  # Friedman's statistic, tie-corrected unless `tie_corrected` is False
    chi2_p: float
    f: float  # Iman & Davenport's F_F, from `chi2`
    f_p: float
    critical_difference: float  # Nemenyi's, at `alpha`
    alpha: float
    tie_corrected: bool

    @property
    def significant(self) -> bool:
        """Iman & Davenport's F rejects equal mean ranks at `alpha` (Demšar prefers it to
        the chi-square, which is too conservative)."""
        return self.f_p < self.alpha

    def differ(self, a: str, b: str) -> bool:
        """Nemenyi: the two models' mean ranks differ by at least the critical difference."""
        ranks = dict(zip(self.models, self.mean_ranks, strict=True))
        return abs(ranks[a] - ranks[b]) >= self.critical_difference

    def cliques(self) -> list[tuple[str, ...]]:
        """Maximal runs of models, in mean-rank order, that Nemenyi cannot tell apart (the
        bars of a critical-difference diagram); models alone in their run are left out."""
        order = sorted(range(len(self.models)), key=lambda i: (self.mean_ranks[i], i))
        ranks = [self.mean_ranks[i] for i in order]
        runs: list[tuple[int, int]] = []
        for start in range(len(order)):
            end = start
            while end + 1 < len(order) and ranks[end + 1] - ranks[start] < self.critical_difference:
                end += 1
            if end > start and not any(s <= start and end <= e for s, e in runs):
                runs.append((start, end))
        return [tuple(self.models[order[i]] for i in range(s, e + 1)) for s, e in runs]


def friedman_nemenyi(
    scores: np.ndarray,
    models: Sequence[str],
    alpha: float = 0.05,
    higher_is_better: bool = True,
    tie_correction: bool = True,
) -> FriedmanResult:
    """Friedman's test and Nemenyi's critical difference on a (categories, models) table.

    Every cell must be present: a category where a model has no result is left out by the
    caller, not filled in. With `tie_correction` False the statistic is Demšar's formula as
    printed, 12N / (k (k + 1)) [sum R_j^2 - k (k + 1)^2 / 4]."""
    table = np.asarray(scores, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(models):
        raise ValueError(f"scores {table.shape} must be (categories, {len(models)} models)")
    if len(set(models)) != len(models):
        raise ValueError("model names must be unique")
    if not np.isfinite(table).all():
        raise ValueError("every (category, model) cell needs a finite score")
    n, k = table.shape
    if n < 2 or k < 2:
        raise ValueError(f"Friedman's test needs at least 2 categories and 2 models, got {n}, {k}")
    ranks = rankdata(-table if higher_is_better else table, axis=1)
    mean_ranks = ranks.mean(axis=0)
    statistic = 12 * n / (k * (k + 1)) * (np.sum(mean_ranks**2) - k * (k + 1) ** 2 / 4)
    if tie_correction:
        ties = sum(
            float(np.sum(counts**3 - counts))
            for counts in (np.unique(row, return_counts=True)[1] for row in ranks)
        )
        correction = 1 - ties / (n * k * (k * k - 1))
        # every category a complete tie: no evidence of any difference
        statistic = statistic / correction if correction > 0 else 0.0
    chi2_p = float(chi2.sf(statistic, k - 1))
    denominator = n * (k - 1) - statistic
    f_statistic = (n - 1) * statistic / denominator if denominator > 0 else math.inf
    f_p = float(f.sf(f_statistic, k - 1, (k - 1) * (n - 1)))
    return FriedmanResult(
        models=tuple(models),
        mean_ranks=tuple(float(r) for r in mean_ranks),
        n_categories=n,
        chi2=float(statistic),
        chi2_p=chi2_p,
        f=float(f_statistic),
        f_p=f_p,
        critical_difference=nemenyi_critical_difference(k, n, alpha),
        alpha=alpha,
        tie_corrected=tie_correction,
    )
