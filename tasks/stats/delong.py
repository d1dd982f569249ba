"""DeLong's AUROC variance, its interval, and the tests of two ROC curves.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated
receiver operating characteristic curves: a nonparametric approach", Biometrics 44(3),
computed with the fast algorithm of Sun & Xu (2014), "Fast implementation of DeLong's
algorithm for comparing the areas under correlated receiver operating characteristic
curves", IEEE Signal Processing Letters 21(11): three midrankings, O(n log n).

Conventions are the benchmark's: a higher score is more anomalous, label 1 is anomalous
(defective), and a good and a defective image with the same score count as half a pair.
That is R's pROC called with ``levels = c(0, 1), direction = "<"``; the values of
``var(roc, method = "delong")``, ``ci.auc(roc, method = "delong")`` and
``roc.test(roc1, roc2, method = "delong")`` are reproduced to rounding error
(``tests/fixtures/proc_reference.json`` holds pROC's figures and the script behind them).

Where DeLong's variance is 0 or undefined (a perfect split, every score tied, or one image
in a class), pROC's interval is the single point [AUROC, AUROC]. `auroc_interval` then
takes Hanley & McNeil's variance (1982, "The meaning and use of the area under a receiver
operating characteristic (ROC) curve", Radiology 143) at the AUROC with one rightly and one
wrongly ordered pseudo-pair added (Laplace's rule of succession), and says so in `method`.

Example:
    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> a = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.3])
    >>> b = np.array([0.2, 0.1, 0.3, 0.9, 0.6, 0.5])
    >>> round(auroc_interval(a, labels).auroc, 4), auroc_interval(b, labels).method
    (0.7778, 'hanley-mcneil-laplace')
    >>> round(paired_delong_test(b, a, labels).difference, 4)
    0.2222

See Also:
    tasks.stats.bootstrap: the stratified bootstrap, for pixel AUROC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

METHOD_DELONG = "delong"
# DeLong's variance is 0 or undefined: Hanley-McNeil at the Laplace-adjusted AUROC.
METHOD_HANLEY_MCNEIL = "hanley-mcneil-laplace"


@dataclass(frozen=True)
class AurocInterval:
    """An AUROC with its two-sided interval at `level`, and how the interval was obtained.

    `variance` is the variance behind the interval: DeLong's, Hanley-McNeil's where
    `method` says so, or the bootstrap replicates'. `n_normal` and `n_anomalous` count
    images (also for a pixel AUROC). `replicates` and `seed` are set for a bootstrap."""

    auroc: float
    low: float
    high: float
    level: float
    method: str
    variance: float
    n_normal: int
    n_anomalous: int
    replicates: int | None = None
    seed: int | None = None

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class RocComparison:
    """AUROC of curve a minus curve b, with its standard error, interval and test.

    Paired (same images): `statistic` is DeLong's z and `df` is None. Unpaired: `statistic`
    is pROC's D, referred to Student's t with the Welch-Satterthwaite `df`. `low`/`high`
    bound the difference at `level`, clipped to [-1, 1]."""

    auroc_a: float
    auroc_b: float
    difference: float
    se: float
    low: float
    high: float
    level: float
    statistic: float
    p_value: float
    paired: bool
    df: float | None
    n_normal: int  # curve a's images (both curves' when paired)
    n_anomalous: int
    n_normal_b: int
    n_anomalous_b: int

    @property
    def degenerate(self) -> bool:
        """True when the standard error is 0: p is then 1 (no difference) or 0."""
        return self.se == 0.0

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def _check(scores: np.ndarray, labels: np.ndarray, min_per_class: int) -> None:
    if labels.ndim != 1 or scores.shape[-1] != labels.shape[0]:
        raise ValueError(
            f"scores {scores.shape} and labels {labels.shape} must cover the same images"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    n_anomalous = int(labels.sum())
    n_normal = labels.shape[0] - n_anomalous
    if min(n_normal, n_anomalous) < min_per_class:
        raise ValueError(
            f"needs at least {min_per_class} good and {min_per_class} anomalous images, "
            f"got {n_normal} good and {n_anomalous} anomalous"
        )


def _as_arrays(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def placements(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by Sun & Xu's midranks, for one or more curves.

    `scores` is (n,) or (k, n). Returns (case, control) placements, shaped (k, n1) and
    (k, n0): for each anomalous image the share of good images scoring below it, ties one
    half; for each good image the share of anomalous images scoring above it. Their mean
    is the AUROC."""
    scores, labels = _as_arrays(scores, labels)
    scores = np.atleast_2d(scores)
    _check(scores, labels, min_per_class=1)
    cases, controls = scores[:, labels == 1], scores[:, labels == 0]
    m, n = cases.shape[1], controls.shape[1]
    together = rankdata(np.concatenate([cases, controls], axis=1), axis=1)
    within_cases = rankdata(cases, axis=1)
    within_controls = rankdata(controls, axis=1)
    case_placements = (together[:, :m] - within_cases) / n
    control_placements = 1.0 - (together[:, m:] - within_controls) / m
    return case_placements, control_placements


def _delong_covariance(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and DeLong's (k, k) covariance, S10/m + S01/n."""
    case_p, control_p = placements(scores, labels)
    aurocs = case_p.mean(axis=1)
    m, n = case_p.shape[1], control_p.shape[1]
    s10 = np.atleast_2d(np.cov(case_p, ddof=1))
    s01 = np.atleast_2d(np.cov(control_p, ddof=1))
    return aurocs, s10 / m + s01 / n


def delong_variance(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(AUROC, DeLong's variance): pROC's `auc(roc)` and `var(roc, method = "delong")`.

    Needs at least 2 images of each class (the variance divides by n - 1)."""
    scores, labels = _as_arrays(scores, labels)
    _check(scores, labels, min_per_class=2)
    aurocs, cov = _delong_covariance(scores, labels)
    return float(aurocs[0]), float(cov[0, 0])


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2))


def delong_interval(auroc: float, variance: float, level: float = 0.95) -> tuple[float, float]:
    """pROC's `ci.auc(method = "delong")`: AUROC -/+ z * sqrt(variance), clipped to [0, 1].

    With a variance of 0 this is the degenerate [AUROC, AUROC]; `auroc_interval` does not
    report that."""
    half = _z(level) * math.sqrt(max(variance, 0.0))
    return max(0.0, auroc - half), min(1.0, auroc + half)


def hanley_mcneil_variance(auroc: float, n_normal: int, n_anomalous: int) -> float:
    """Hanley & McNeil's (1982) variance of an AUROC, taken at the AUROC with one rightly
    and one wrongly ordered pseudo-pair added, so that 0 and 1 keep a width.

    The formula assumes the AUROC is at least 0.5; below that it is taken at 1 - AUROC,
    the same curve with the score's sign flipped."""
    if n_normal < 1 or n_anomalous < 1:
        raise ValueError("Hanley-McNeil's variance needs good and anomalous images")
    pairs = n_normal * n_anomalous
    a = (auroc * pairs + 1) / (pairs + 2)
    a = max(a, 1.0 - a)
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    return (a * (1 - a) + (n_anomalous - 1) * (q1 - a**2) + (n_normal - 1) * (q2 - a**2)) / pairs


def auroc_interval(scores: np.ndarray, labels: np.ndarray, level: float = 0.95) -> AurocInterval:
    """AUROC with DeLong's interval at `level`, clipped to [0, 1].

    Where DeLong's variance is 0 (a perfect split, all scores tied) or undefined (one image
    in a class), the interval comes from `hanley_mcneil_variance` instead, and `method`
    says so: pROC's [1, 1] at a perfect split of 8 + 12 images would claim certainty that
    20 images cannot give."""
    scores, labels = _as_arrays(scores, labels)
    _check(scores, labels, min_per_class=1)
    n_anomalous = int(labels.sum())
    n_normal = labels.shape[0] - n_anomalous
    if min(n_normal, n_anomalous) >= 2:
        aurocs, cov = _delong_covariance(scores, labels)
        auroc, variance = float(aurocs[0]), float(cov[0, 0])
    else:
        auroc, variance = float(placements(scores, labels)[0].mean()), 0.0
    method = METHOD_DELONG
    if variance <= 0.0:
        method = METHOD_HANLEY_MCNEIL
        variance = hanley_mcneil_variance(auroc, n_normal, n_anomalous)
    low, high = delong_interval(auroc, variance, level)
    return AurocInterval(auroc, low, high, level, method, variance, n_normal, n_anomalous)


def _two_sided_z(difference: float, se: float) -> tuple[float, float]:
    """z and two-sided p; as pROC, 0/0 is z = 0 (p = 1) and d/0 is an infinite z (p = 0)."""
    if se > 0.0:
        z = difference / se
    elif difference == 0.0:
        z = 0.0
    else:
        z = math.copysign(math.inf, difference)
    return z, float(2 * norm.sf(abs(z)))


def paired_delong_test(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, level: float = 0.95
) -> RocComparison:
    """DeLong's test of two correlated ROC curves (two models scoring the same images),
    as pROC's `roc.test(roc1, roc2, method = "delong", paired = TRUE)`.

    difference = AUROC(a) - AUROC(b); se^2 = var(a) + var(b) - 2 cov(a, b) from the joint
    placements; z = difference / se; two-sided normal p; interval difference -/+ z * se."""
    a, labels = _as_arrays(scores_a, labels)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"a paired test needs both curves on the same images: {a.shape} vs {b.shape}"
        )
    both = np.stack([a, b])
    _check(both, labels, min_per_class=2)
    aurocs, cov = _delong_covariance(both, labels)
    difference = float(aurocs[0] - aurocs[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    z, p = _two_sided_z(difference, se)
    half = _z(level) * se
    n_anomalous = int(labels.sum())
    n_normal = labels.shape[0] - n_anomalous
    return RocComparison(
        auroc_a=float(aurocs[0]),
        auroc_b=float(aurocs[1]),
        difference=difference,
        se=se,
        low=max(-1.0, difference - half),
        high=min(1.0, difference + half),
        level=level,
        statistic=z,
        p_value=p,
        paired=True,
        df=None,
        n_normal=n_normal,
        n_anomalous=n_anomalous,
        n_normal_b=n_normal,
        n_anomalous_b=n_anomalous,
    )


def unpaired_delong_test(
    scores_a: np.ndarray,
    labels_a: np.ndarray,
    scores_b: np.ndarray,
    labels_b: np.ndarray,
    level: float = 0.95,
) -> RocComparison:
    """DeLong's test of two ROC curves on different images, as pROC's
    `roc.test(roc1, roc2, method = "delong", paired = FALSE)`.

    D = difference / sqrt(var(a) + var(b)), referred to Student's t with pROC's
    Welch-Satterthwaite degrees of freedom (each curve's total image count minus one).
    pROC gives no interval here; this one is difference -/+ t_df * se, on the same t.
    Both variances 0: D = 0 (p = 1) when the AUROCs are equal, else infinite (p = 0)."""
    _z(level)
    a, labels_a = _as_arrays(scores_a, labels_a)
    b, labels_b = _as_arrays(scores_b, labels_b)
    _check(a, labels_a, min_per_class=2)
    _check(b, labels_b, min_per_class=2)
    auroc_a, var_a = delong_variance(a, labels_a)
    auroc_b, var_b = delong_variance(b, labels_b)
    difference = auroc_a - auroc_b
    total = var_a + var_b
    se = math.sqrt(total)
    if total > 0.0:
        df = total**2 / (var_a**2 / (a.shape[0] - 1) + var_b**2 / (b.shape[0] - 1))
        statistic = difference / se
        p = float(2 * student_t.sf(abs(statistic), df))
        half = float(student_t.ppf(0.5 + level / 2, df)) * se
    else:
        df = math.nan
        statistic, p = _two_sided_z(difference, 0.0)
        half = 0.0
    n_anomalous_a, n_anomalous_b = int(labels_a.sum()), int(labels_b.sum())
    return RocComparison(
        auroc_a=auroc_a,
        auroc_b=auroc_b,
        difference=difference,
        se=se,
        low=max(-1.0, difference - half),
        high=min(1.0, difference + half),
        level=level,
        statistic=statistic,
        p_value=p,
        paired=False,
        df=df,
        n_normal=labels_a.shape[0] - n_anomalous_a,
        n_anomalous=n_anomalous_a,
        n_normal_b=labels_b.shape[0] - n_anomalous_b,
        n_anomalous_b=n_anomalous_b,
    )


def per_defect_type_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    defect_types: Sequence[str],
    level: float = 0.95,
) -> dict[str, AurocInterval]:
    """Each defect type's anomalous images against all good images, with `auroc_interval`.

    `defect_types` names each image's type; the good images' names are not used. Keys are
    the anomalous images' types, sorted."""
    scores, labels = _as_arrays(scores, labels)
    types = np.asarray(defect_types, dtype=object)
    if types.shape != labels.shape:
        raise ValueError(f"defect_types {types.shape} and labels {labels.shape} differ")
    _check(scores, labels, min_per_class=1)
    good = labels == 0
    result = {}
    for defect in sorted({str(t) for t in types[labels == 1]}):
        chosen = good | ((labels == 1) & (types == defect))
        result[defect] = auroc_interval(scores[chosen], labels[chosen], level)
    return result


@dataclass(frozen=True)
class DetectableDifference:
    """The smallest AUROC difference a two-sided test at `alpha` detects with `power`:
    (z_{1-alpha/2} + z_power) * se. `se_source` says where the standard error came from."""

    difference: float
    se: float
    se_source: str  # "delong" (the observed paired SE) | "hanley-mcneil" (approximation)
    alpha: float
    power: float


def _detectable(se: float, source: str, alpha: float, power: float) -> DetectableDifference:
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    factor = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    return DetectableDifference(factor * se, se, source, alpha, power)


def planned_detectable_difference(
    n_normal: int, n_anomalous: int, auroc: float, alpha: float = 0.05, power: float = 0.8
) -> DetectableDifference:
    """The detectable difference for a split of this size before any comparison is made:
    both curves at `auroc`, each with Hanley-McNeil's variance, and no correlation between
    them (se^2 = 2 var), which errs on the side of a larger difference."""
    se = math.sqrt(2 * hanley_mcneil_variance(auroc, n_normal, n_anomalous))
    return _detectable(se, "hanley-mcneil", alpha, power)


def minimum_detectable_difference(
    comparison: RocComparison, alpha: float = 0.05, power: float = 0.8
) -> DetectableDifference:
    """The smallest difference this paired split could detect: (z_{1-alpha/2} + z_power)
    times the observed DeLong SE of the difference. Where that SE is 0 (both curves
    perfect, for example) it falls back to `planned_detectable_difference` at the mean of
    the two AUROCs."""
    if not comparison.paired:
        raise ValueError("the minimum detectable difference is defined for a paired comparison")
    if comparison.se > 0.0:
        return _detectable(comparison.se, "delong", alpha, power)
    mean_auroc = (comparison.auroc_a + comparison.auroc_b) / 2
    return planned_detectable_difference(
        comparison.n_normal, comparison.n_anomalous, mean_auroc, alpha, power
    )
