"""Has a cell regressed since the previous comparable run? One explicit rule.

- Same test images (the same paths, each with the same label): DeLong's paired test of
  this run's AUROC minus the previous run's (DeLong, DeLong & Clarke-Pearson 1988, see
  `tasks.stats.delong`). The cell regressed when the difference is negative and the
  two-sided p-value is below `alpha`, which is the same as the difference's
  (1 - alpha) interval lying wholly below 0.
- Different images (a changed split, new data, relabelled images): the cell regressed
  when this run's AUROC lies below the previous run's (1 - alpha) interval
  (`tasks.stats.delong.auroc_interval`: DeLong's, or Hanley-McNeil's at a perfect split).

A rise is never a regression. Both rules ask for a difference the split can show, instead
of a fixed tolerance that is too strict for 20 images and too lax for 2000.

Example:
    >>> import numpy as np
    >>> from tasks.stats.image_scores import ImageScores
    >>> paths, labels = ("a", "b", "c", "d"), np.array([0, 0, 1, 1])
    >>> before = ImageScores(paths, labels, np.array([0.1, 0.2, 0.8, 0.9]))
    >>> now = ImageScores(paths, labels, np.array([0.1, 0.85, 0.8, 0.9]))
    >>> judge_regression(now, before).judged_by
    'paired-delong'
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.stats.delong import auroc_interval, paired_delong_test
from tasks.stats.image_scores import ImageScores

PAIRED = "paired-delong"
INTERVAL = "previous-interval"


@dataclass(frozen=True)
class RegressionVerdict:
    """The judgement and its evidence.

    `interval` is the (1 - alpha) interval of the difference (paired) or of the previous
    run's AUROC (`judged_by` = "previous-interval"); `p_value` is the paired test's, None
    for the interval rule."""

    regressed: bool
    judged_by: str  # PAIRED | INTERVAL
    auroc: float
    previous_auroc: float
    difference: float  # auroc - previous_auroc
    p_value: float | None
    interval: tuple[float, float]
    alpha: float
    reason: str


def judge_regression(
    current: ImageScores, previous: ImageScores, alpha: float = 0.05
) -> RegressionVerdict:
    """Apply the module's rule to this run's and the previous comparable run's scores."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    level = 1.0 - alpha
    if current.same_images(previous):
        before = previous.aligned_to(current)
        test = paired_delong_test(current.scores, before.scores, current.labels, level)
        regressed = test.difference < 0 and test.p_value < alpha
        verdict = "regressed" if regressed else "no significant drop"
        reason = (
            f"{verdict}: AUROC {test.auroc_a:.3f} vs {test.auroc_b:.3f} on the same "
            f"{current.labels.size} images, paired DeLong p = {test.p_value:.3g}"
        )
        return RegressionVerdict(
            regressed=regressed,
            judged_by=PAIRED,
            auroc=test.auroc_a,
            previous_auroc=test.auroc_b,
            difference=test.difference,
            p_value=test.p_value,
            interval=(test.low, test.high),
            alpha=alpha,
            reason=reason,
        )
    now = auroc_interval(current.scores, current.labels, level)
    before = auroc_interval(previous.scores, previous.labels, level)
    regressed = now.auroc < before.low
    where = "below" if regressed else "not below"
    reason = (
        f"{'regressed' if regressed else 'no significant drop'}: AUROC {now.auroc:.3f} is "
        f"{where} the previous run's {level:.0%} interval [{before.low:.3f}, {before.high:.3f}] "
        f"({before.method}); the test images differ, so no paired test"
    )
    return RegressionVerdict(
        regressed=regressed,
        judged_by=INTERVAL,
        auroc=now.auroc,
        previous_auroc=before.auroc,
        difference=now.auroc - before.auroc,
        p_value=None,
        interval=(before.low, before.high),
        alpha=alpha,
        reason=reason,
    )
