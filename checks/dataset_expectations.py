"""Dataset-level rules as a Great Expectations 1.x suite over the manifest.

Two small tables go through one ephemeral GX context per call:
- `files`: one row per image (train and test), with `sha256_in_train_and_test` and
  `category_size` computed first in pandas, since "same content in both splits" and
  "the usual size of this category" are awkward to say in GX itself;
- `categories`: one row per category with its counts per split and, for MVTec AD, how
  they compare with the official table (Bergmann et al., CVPR 2019, Table 1).

Each rule has a stable name (`GX_RULES`); `official_counts` passes on a known subset but
says "subset" in its message and in a note, so a partial copy is reported, not refused.

Example:
    >>> rules, notes = run_dataset_suite(manifest, spec)
    >>> [r.rule for r in rules if not r.passed]
    []
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pandas as pd

from checks.rule_result import RuleResult

log = logging.getLogger(__name__)


class DatasetLayout(Protocol):
    """What the suite reads of a dataset: its kind, its categories and where each lives
    (the validation stage's `DatasetSpec` is one)."""

    @property
    def kind(self) -> str: ...

    @property
    def categories(self) -> tuple[str, ...]: ...

    def category_dir(self, category: str) -> Path: ...


# MVTec AD official counts per category: (train good, test good, test defective).
OFFICIAL_COUNTS: dict[str, tuple[int, int, int]] = {
    "bottle": (209, 20, 63),
    "cable": (224, 58, 92),
    "capsule": (219, 23, 109),
    "carpet": (280, 28, 89),
    "grid": (264, 21, 57),
    "hazelnut": (391, 40, 70),
    "leather": (245, 32, 92),
    "metal_nut": (220, 22, 93),
    "pill": (267, 26, 141),
    "screw": (320, 41, 119),
    "tile": (230, 33, 84),
    "toothbrush": (60, 12, 30),
    "transistor": (213, 60, 40),
    "wood": (247, 19, 60),
    "zipper": (240, 32, 119),
}
# Enough to fit a model and score both classes; the demo has 24/8/12 per category.
MIN_IMAGES: dict[str, int] = {"train_good": 4, "test_good": 1, "test_defect": 1}
SPLIT_FOLDERS = {
    "train_good": "train/good",
    "test_good": "test/good",
    "test_defect": "test/<defect>",
}

GX_RULES: dict[str, str] = {
    "min_images_per_split": "each split holds at least its minimum of images",
    "test_has_both_classes": "test/ holds good and defective images",
    "no_defect_in_train": "train/ holds only good images (train/good)",
    "no_train_test_overlap": "no image content (sha256) is in both train/ and test/",
    "uniform_image_size": "all images of a category have the same width and height",
    "official_counts": "image counts match the official MVTec AD table (a subset is reported)",
}
COUNT_STATUSES_ACCEPTED = ["complete", "subset", "not_an_official_category"]


def _image_table(manifest: pd.DataFrame) -> pd.DataFrame:
    images = manifest[manifest["split"].isin(["train", "test"])]
    files = images[["category", "split", "label", "path", "sha256"]].copy()
    sha_splits = images.groupby(["category", "sha256"])["split"].nunique()
    files["sha256_in_train_and_test"] = [
        sha is not None and sha_splits.get((cat, sha), 0) > 1
        for cat, sha in zip(images["category"], images["sha256"], strict=True)
    ]
    readable = images["readable"]
    files["size"] = (images["width"].astype(str) + "x" + images["height"].astype(str)).where(
        readable
    )
    usual = files[readable].groupby("category")["size"].agg(lambda s: s.mode().iloc[0])
    files["category_size"] = files["category"].map(usual).where(readable)
    return files.reset_index(drop=True)


def _count_status(counts: tuple[int, int, int], official: tuple[int, int, int] | None) -> str:
    if official is None:
        return "not_an_official_category"
    if counts == official:
        return "complete"
    if all(n <= o for n, o in zip(counts, official, strict=True)):
        return "subset"
    return "exceeds_official"


def _category_table(manifest: pd.DataFrame, spec: DatasetLayout) -> pd.DataFrame:
    rows = []
    for category in spec.categories:
        own = manifest[manifest["category"] == category]
        train, test = own[own["split"] == "train"], own[own["split"] == "test"]
        counts = (
            int((train["label"] == "good").sum()),
            int((test["label"] == "good").sum()),
            int((test["label"] == "defect").sum()),
        )
        official = OFFICIAL_COUNTS.get(category) if spec.kind == "mvtec" else None
        rows.append(
            {
                "category": category,
                "train_good": counts[0],
                "test_good": counts[1],
                "test_defect": counts[2],
                "test_classes": ",".join(sorted(set(test["label"]))),
                "count_status": _count_status(counts, official),
                "official_total": sum(official) if official else None,
            }
        )
    return pd.DataFrame(rows)


def _official_message(row: pd.Series) -> str:
    counts = (row["train_good"], row["test_good"], row["test_defect"])
    official = OFFICIAL_COUNTS.get(row["category"], (0, 0, 0))
    detail = (
        f"train/good {counts[0]} of {official[0]}, test/good {counts[1]} of {official[1]}, "
        f"test defective {counts[2]} of {official[2]}"
    )
    if row["count_status"] == "subset":
        return f"subset: {sum(counts)} of {sum(official)} official images ({detail})"
    if row["count_status"] == "complete":
        return f"complete: all {sum(official)} official images"
    if row["count_status"] == "exceeds_official":
        return f"more images than MVTec AD has ({detail}): extra or misplaced files"
    return "not an MVTec AD category: no official counts to compare"


def _run_suite(context, name: str, table: pd.DataFrame, expectations: list, key: str) -> list:
    import great_expectations as gx

    source = context.data_sources.add_pandas(f"{name}_source")
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.get_batch(batch_parameters={"dataframe": table}).validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]},
    )
    return result.results


def _unexpected_keys(outcome, key: str) -> list[str]:
    return [str(row[key]) for row in outcome.result.get("unexpected_index_list") or []]


def run_dataset_suite(
    manifest: pd.DataFrame, spec: DatasetLayout, min_images: Mapping[str, int] | None = None
) -> tuple[list[RuleResult], list[str]]:
    """Run the dataset-level GX suite; one RuleResult per (category, rule), plus notes."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no phoning home offline
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    minimum = {**MIN_IMAGES, **(min_images or {})}
    expect = gx.expectations
    files, categories = _image_table(manifest), _category_table(manifest, spec)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm in logs
    file_expectations = [
        expect.ExpectColumnValuesToBeInSet(
            column="label", value_set=["good"], row_condition='split=="train"',
            condition_parser="pandas", meta={"rule": "no_defect_in_train"},
        ),
        expect.ExpectColumnValuesToBeInSet(
            column="sha256_in_train_and_test", value_set=[False],
            meta={"rule": "no_train_test_overlap"},
        ),
        expect.ExpectColumnPairValuesToBeEqual(
            column_A="size", column_B="category_size", ignore_row_if="either_value_is_missing",
            meta={"rule": "uniform_image_size"},
        ),
    ]  # fmt: skip
    category_expectations = [
        expect.ExpectColumnValuesToBeBetween(
            column=split, min_value=minimum[split], meta={"rule": "min_images_per_split"}
        )
        for split in MIN_IMAGES
    ] + [
        expect.ExpectColumnValuesToBeInSet(
            column="test_classes", value_set=["defect,good"],
            meta={"rule": "test_has_both_classes"},
        ),
    ]  # fmt: skip
    if spec.kind == "mvtec":
        category_expectations.append(
            expect.ExpectColumnValuesToBeInSet(
                column="count_status", value_set=COUNT_STATUSES_ACCEPTED,
                meta={"rule": "official_counts"},
            )
        )  # fmt: skip
    failing: dict[tuple[str, str], list[str]] = {}  # (rule, category) -> examples
    path_category = dict(zip(files["path"], files["category"], strict=True))
    if len(files):
        for outcome in _run_suite(context, "files", files, file_expectations, "path"):
            rule = outcome.expectation_config.meta["rule"]
            for path in _unexpected_keys(outcome, "path"):
                failing.setdefault((rule, path_category[path]), []).append(path)
    by_category = categories.set_index("category")
    for outcome in _run_suite(context, "categories", categories, category_expectations, "category"):
        rule = outcome.expectation_config.meta["rule"]
        for category in _unexpected_keys(outcome, "category"):
            row = by_category.loc[category].copy()
            row["category"] = category
            if rule == "min_images_per_split":
                split = outcome.expectation_config.kwargs["column"]
                example = (
                    f"{spec.category_dir(category) / SPLIT_FOLDERS[split]} has {row[split]} "
                    f"images (minimum {minimum[split]})"
                )
            elif rule == "test_has_both_classes":
                found = row["test_classes"] or "nothing"
                example = f"{spec.category_dir(category) / 'test'} holds: {found}"
            else:
                example = f"{spec.category_dir(category)}: {_official_message(row)}"
            failing.setdefault((rule, category), []).append(example)

    rule_names = [r for r in GX_RULES if r != "official_counts" or spec.kind == "mvtec"]
    results, notes = [], []
    for category in spec.categories:
        for rule in rule_names:
            examples = failing.get((rule, category), [])
            message = GX_RULES[rule]
            if rule == "official_counts":
                row = by_category.loc[category].copy()
                row["category"] = category
                message = f"{message}: {_official_message(row)}"
                if row["count_status"] == "subset":
                    notes.append(f"MVTec {category} is a {_official_message(row)}")
            results.append(
                RuleResult(
                    tool="great_expectations",
                    category=category,
                    rule=rule,
                    passed=not examples,
                    failing_count=len(examples),
                    examples=examples[:10],
                    message=message,
                )
            )
    return results, notes
