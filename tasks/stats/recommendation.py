"""Which model and inference path to deploy on a category's line: one documented rule.

1. Eligible: candidates whose batch-1 throughput is at least `min_ips` images/s. A path
   without a measured throughput (failed, skipped) is not eligible.
2. Best: the eligible candidate with the lowest false-positive rate at 100 % recall
   (`tasks.stats.recall.fpr_at_full_recall`); equal rates go to the faster.
3. Tied with the best: every eligible candidate whose rejected good images do not differ
   significantly from the best's, by McNemar's exact test (McNemar 1947, "Note on the
   sampling error of the difference between correlated proportions or percentages",
   Psychometrika 12): each candidate rejects, at its own 100 %-recall threshold, a set
   of the same good images, and the test asks whether the images rejected by one and not
   the other lean to one side more than chance allows (two-sided, `alpha`). It tests the
   very figure the ranking uses, on the same images; DeLong's test of the AUROC would test
   the whole curve instead, and can call two models different whose cost at the operating
   point is the same. No correction for the several comparisons with the best: that errs
   on the side of the more accurate candidate, as an inspection line wants.
4. Pick: the fastest of the tied candidates.

No eligible candidate: no pick. The warning names the fastest candidate and its speed, so
that a person decides whether a slower line or faster hardware is the answer.

The 100 %-recall threshold is set on the test images themselves, so the rate is the best
that threshold choice could do on this split; the validation threshold's recall
(`tasks.stats.recall.operating_point`) says what a fixed threshold gives.

Example:
    >>> import numpy as np
    >>> from tasks.stats.image_scores import ImageScores
    >>> paths, labels = ("g1", "g2", "d1", "d2"), np.array([0, 0, 1, 1])
    >>> slow = ImageScores(paths, labels, np.array([0.1, 0.2, 0.8, 0.9]))  # FPR 0
    >>> fast = ImageScores(paths, labels, np.array([0.1, 0.9, 0.8, 0.95]))  # FPR 0.5
    >>> a = Candidate("patchcore", "torch-fp32", slow, 40.0, "cpu")
    >>> b = Candidate("efficient_ad", "openvino-int8", fast, 90.0, "cpu")
    >>> recommend("grid", [a, b], min_ips=30).pick.name  # 1 of 2 good images: not significant
    'efficient_ad / openvino-int8'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from tasks.stats.image_scores import ImageScores
from tasks.stats.recall import fpr_at_full_recall


@dataclass(frozen=True, eq=False)
class Candidate:
    """One deployable option for a category: a model's inference path and its test scores."""

    model: str
    path: str  # inference path, e.g. torch-fp32, openvino-int8
    scores: ImageScores
    images_per_second: float | None  # at batch 1; None when not measured
    hardware: str

    @property
    def name(self) -> str:
        return f"{self.model} / {self.path}"

    @property
    def fpr_at_full_recall(self) -> float:
        return fpr_at_full_recall(self.scores.scores, self.scores.labels)

    def rejected_good(self) -> np.ndarray:
        """Per good image (in path order): rejected at this candidate's 100 %-recall threshold."""
        s = self.scores
        threshold = s.scores[s.labels == 1].min()
        order = np.argsort(np.asarray(s.paths, dtype=object)[s.labels == 0])
        return (s.scores[s.labels == 0] >= threshold)[order]


@dataclass(frozen=True)
class RunnerUp:
    """A candidate that was not picked, and why, in a sentence for the report."""

    candidate: Candidate
    fpr_at_full_recall: float
    reason: str
    p_value: float | None  # McNemar's against the best, for eligible candidates


@dataclass(frozen=True)
class Recommendation:
    """The pick for one category (None when no candidate is fast enough), and the rest."""

    category: str
    min_ips: float
    pick: Candidate | None
    reason: str
    runners_up: tuple[RunnerUp, ...]
    warning: str | None
    alpha: float

    @property
    def hardware(self) -> str | None:
        return None if self.pick is None else self.pick.hardware


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: the binomial test of
    `only_a` out of `only_a + only_b` at one half; 1 when there is no discordant pair."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts cannot be negative")
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def compare_rejections(a: Candidate, b: Candidate) -> float:
    """McNemar's p-value for the good images rejected by a and by b at 100 % recall."""
    rejected_a, rejected_b = a.rejected_good(), b.rejected_good()
    return mcnemar_exact(
        int((rejected_a & ~rejected_b).sum()), int((~rejected_a & rejected_b).sum())
    )


def _ips(candidate: Candidate) -> str:
    return f"{candidate.images_per_second:.1f} img/s"


def recommend(
    category: str, candidates: Sequence[Candidate], min_ips: float, alpha: float = 0.05
) -> Recommendation:
    """Apply the module's rule to one category's candidates, all scored on the same images."""
    if not candidates:
        raise ValueError(f"{category}: no candidates to recommend from")
    if min_ips < 0:
        raise ValueError(f"min_ips must be at least 0, got {min_ips}")
    first = candidates[0].scores
    for c in candidates[1:]:
        if not c.scores.same_images(first):
            raise ValueError(
                f"{category}: {c.name} was not scored on the same test images as "
                f"{candidates[0].name}; a recommendation compares candidates on one split"
            )
    fpr = {id(c): c.fpr_at_full_recall for c in candidates}
    eligible = [
        c for c in candidates if c.images_per_second is not None and c.images_per_second >= min_ips
    ]
    slow = [c for c in candidates if c not in eligible]
    runners: list[RunnerUp] = []
    for c in slow:
        why = (
            "no batch-1 throughput measured"
            if c.images_per_second is None
            else f"slower than {min_ips:g} img/s ({_ips(c)} at batch 1)"
        )
        runners.append(RunnerUp(c, fpr[id(c)], why, None))
    hardware = sorted({c.hardware for c in candidates})
    mixed = (
        f" Throughputs were measured on different hardware ({', '.join(hardware)})."
        if len(hardware) > 1
        else ""
    )
    if not eligible:
        measured = [c for c in candidates if c.images_per_second is not None]
        fastest = max(measured, key=lambda c: c.images_per_second, default=None)
        warning = f"No candidate reaches {min_ips:g} img/s at batch 1"
        warning += (
            f"; the fastest is {fastest.name} at {_ips(fastest)} on {fastest.hardware}."
            if fastest
            else "; no throughput was measured."
        )
        return Recommendation(
            category=category,
            min_ips=min_ips,
            pick=None,
            reason="no candidate is fast enough",
            runners_up=tuple(runners),
            warning=warning + mixed,
            alpha=alpha,
        )

    best = min(eligible, key=lambda c: (fpr[id(c)], -c.images_per_second, c.name))
    p_vs_best = {id(c): compare_rejections(c, best) for c in eligible if c is not best}
    tied = [c for c in eligible if c is best or p_vs_best[id(c)] >= alpha]
    pick = max(tied, key=lambda c: (c.images_per_second, -fpr[id(c)], c.name))

    if pick is best:
        reason = (
            f"lowest FPR at 100 % recall ({fpr[id(pick)]:.3f}) among candidates at "
            f"{min_ips:g} img/s or more, and the fastest of those that do not differ from it"
        )
    else:
        reason = (
            f"FPR at 100 % recall {fpr[id(pick)]:.3f}, not significantly worse than "
            f"{best.name}'s {fpr[id(best)]:.3f} (McNemar p = {p_vs_best[id(pick)]:.3g}), "
            f"and faster ({_ips(pick)} vs {_ips(best)})"
        )
    for c in eligible:
        if c is pick:
            continue
        rate = fpr[id(c)]
        if c is best:
            why = (
                f"lowest FPR at 100 % recall ({rate:.3f}), but {pick.name} does not differ "
                f"significantly and is faster ({_ips(pick)} vs {_ips(c)})"
            )
            runners.append(RunnerUp(c, rate, why, p_vs_best[id(pick)]))
            continue
        p = p_vs_best[id(c)]
        if p < alpha:
            why = (
                f"FPR at 100 % recall {rate:.3f} vs {fpr[id(best)]:.3f} ({best.name}), "
                f"significant (McNemar p = {p:.3g})"
            )
        else:
            why = (
                f"tied on FPR at 100 % recall ({rate:.3f} vs {fpr[id(best)]:.3f}, McNemar "
                f"p = {p:.3g}), slower ({_ips(c)} vs {_ips(pick)})"
            )
        runners.append(RunnerUp(c, rate, why, p))
    order = {id(c): i for i, c in enumerate(candidates)}
    runners.sort(key=lambda r: order[id(r.candidate)])
    return Recommendation(
        category=category,
        min_ips=min_ips,
        pick=pick,
        reason=f"{reason}, on {pick.hardware}",
        runners_up=tuple(runners),
        warning=mixed.strip() or None,
        alpha=alpha,
    )
