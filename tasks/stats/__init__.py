"""Statistics for decisions a user can trust: intervals, paired tests, ranks, recall-first
operating points, seeds, regressions and a recommendation per category.

Pure functions over numpy arrays (numpy and scipy; matplotlib for the one drawing), with
no Prefect, store or model code, so that every figure can be recomputed from the stored
per-image scores. Each module names its paper:

- `delong`: DeLong's AUROC interval and the paired / unpaired tests (DeLong et al. 1988,
  Sun & Xu 2014), checked against R's pROC; the minimum detectable difference.
- `bootstrap`: stratified percentile bootstrap over images, for image and pixel AUROC.
- `multiple`: Holm's step-down correction (Holm 1979).
- `ranking`, `cd_diagram`: Friedman, Iman-Davenport and Nemenyi across categories, and
  the critical-difference diagram (Demšar 2006).
- `recall`: false-positive rate at 100 % recall, recall at a threshold or an FPR.
- `seeds`: mean ± sample standard deviation across seeds.
- `regression`: has a cell regressed since the previous comparable run?
- `recommendation`: which model and path to deploy, with why each runner-up lost.

Example:
    >>> import numpy as np
    >>> from tasks.stats import auroc_interval
    >>> auroc_interval(np.array([0.1, 0.3, 0.2, 0.9]), np.array([0, 0, 1, 1])).auroc
    0.75
"""

from tasks.stats.bootstrap import bootstrap_auroc, bootstrap_pixel_auroc
from tasks.stats.delong import (
    AurocInterval,
    DetectableDifference,
    RocComparison,
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
from tasks.stats.image_scores import ImageScores
from tasks.stats.multiple import holm_adjust
from tasks.stats.ranking import (
    FriedmanResult,
    friedman_nemenyi,
    nemenyi_critical_difference,
    nemenyi_q,
)
from tasks.stats.recall import (
    OperatingPoint,
    RecallFirstMetrics,
    fpr_at_full_recall,
    operating_point,
    recall_at_fpr,
    recall_first_metrics,
)
from tasks.stats.recommendation import (
    Candidate,
    Recommendation,
    RunnerUp,
    compare_rejections,
    mcnemar_exact,
    recommend,
)
from tasks.stats.regression import RegressionVerdict, judge_regression
from tasks.stats.seeds import SeedSummary, summarise_seeds

__all__ = [
    "AurocInterval",
    "Candidate",
    "DetectableDifference",
    "FriedmanResult",
    "ImageScores",
    "OperatingPoint",
    "RecallFirstMetrics",
    "Recommendation",
    "RegressionVerdict",
    "RocComparison",
    "RunnerUp",
    "SeedSummary",
    "auroc_interval",
    "bootstrap_auroc",
    "bootstrap_pixel_auroc",
    "compare_rejections",
    "delong_interval",
    "delong_variance",
    "friedman_nemenyi",
    "fpr_at_full_recall",
    "hanley_mcneil_variance",
    "holm_adjust",
    "judge_regression",
    "mcnemar_exact",
    "minimum_detectable_difference",
    "nemenyi_critical_difference",
    "nemenyi_q",
    "operating_point",
    "paired_delong_test",
    "per_defect_type_auroc",
    "placements",
    "planned_detectable_difference",
    "recall_at_fpr",
    "recall_first_metrics",
    "recommend",
    "summarise_seeds",
    "unpaired_delong_test",
]
