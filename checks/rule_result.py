"""What a data rule reports: `RuleResult`, the one result type of `checks/`.

The pandera schema (`checks.manifest_schema`) and the Great Expectations suite
(`checks.dataset_expectations`) each judge a dataset rule by rule; the validation stage
(`tasks.validation`) collects their `RuleResult`s into a report. `checks/` imports
nothing from `tasks/`: this type lives here so the arrow points `tasks -> checks` only.

Example:
    >>> RuleResult(tool="pandera", category="demo_grid", rule="file_opens_as_image",
    ...            passed=False, failing_count=1, examples=["a.png"], message="...").passed
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RuleResult:
    """One rule of one tool on one category (category "*" for dataset-wide rules)."""

    tool: Literal["pandera", "great_expectations", "layout"]
    category: str
    rule: str  # stable name, e.g. "mask_matches_image_size"
    passed: bool
    failing_count: int
    examples: list[str]  # file paths or values that broke the rule (a few)
    message: str  # human-readable: what was expected
