"""The validation gate: per-file rules (pandera) and dataset rules (Great Expectations).

Every rule is reported for every category, passed or not, so a report lists what was
checked as well as what broke; `ValidationReport.passed` is False on any failure and the
flow refuses to train on such data. The dataset hash identifies the exact content
validated (sha256 over the sorted (relative path, file sha256) pairs and the kind).

Example:
    >>> manifest, report = validate_dataset(prepare_dataset("demo", None, None))
    >>> report.passed, report.dataset_hash[:12]
    (True, '...')
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from checks.dataset_expectations import run_dataset_suite
from checks.manifest_schema import RULES, VALIDATION_CATEGORY, ManifestSchema
from checks.rule_result import RuleResult
from tasks.results.types import DatasetSpec, ValidationReport
from tasks.validation.manifest import build_manifest, build_validation_manifest

log = logging.getLogger(__name__)

_RULE_BY_MESSAGE = {message: name for name, message in RULES.items()}
MAX_EXAMPLES = 10


def dataset_hash(manifest: pd.DataFrame, kind: str) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs, then the dataset kind."""
    digest = hashlib.sha256()
    pairs = sorted(zip(manifest["relpath"], manifest["sha256"].fillna(""), strict=True))
    for relpath, sha in pairs:
        digest.update(f"{relpath}\t{sha}\n".encode())
    digest.update(f"kind={kind}".encode())
    return digest.hexdigest()


def _pandera_failures(manifest: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(rule, category) -> paths of failing files; schema-wide problems go to category '*'."""
    try:
        ManifestSchema.validate(manifest, lazy=True)
        return {}
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    failing: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen: set[tuple[str, object]] = set()
    for check, index, failure in zip(
        cases["check"], cases["index"], cases["failure_case"], strict=True
    ):
        rule = _RULE_BY_MESSAGE.get(str(check), str(check))
        if index is None or pd.isna(index) or index not in manifest.index:
            failing[(rule, "*")].append(str(failure))
            continue
        if (rule, index) in seen:  # a dataframe check reports each column of a failing row
            continue
        seen.add((rule, index))
        row = manifest.loc[index]
        failing[(rule, row["category"])].append(str(row["path"]))
    return failing


def _pandera_rules(manifest: pd.DataFrame, spec: DatasetSpec) -> list[RuleResult]:
    failing = _pandera_failures(manifest)
    by_path = manifest.drop_duplicates("path").set_index("path")
    results = []
    categories = list(spec.categories)
    if (manifest["category"] == VALIDATION_CATEGORY).any():
        categories.append(VALIDATION_CATEGORY)
    for category in categories:
        for rule, message in RULES.items():
            paths = failing.pop((rule, category), [])
            results.append(_result("pandera", category, rule, message,
                                   [_explain(rule, p, by_path) for p in paths]))  # fmt: skip
    for (rule, category), examples in failing.items():  # column types, uniqueness, ...
        message = RULES.get(rule, f"schema check {rule}")
        results.append(_result("pandera", category, rule, message, examples))
    return results


_DETAIL_FROM_READ_ERROR = ("file_opens_as_image", "regular_file", "no_symlinks",
                           "file_within_size_cap")  # fmt: skip


def _explain(rule: str, path: str, by_path: pd.DataFrame) -> str:
    """The failing path (escaped when it holds control characters), with the detail that
    makes the failure obvious."""
    shown = path if path.isprintable() else ascii(path)
    if path not in by_path.index:
        return shown
    row = by_path.loc[path]
    if rule in _DETAIL_FROM_READ_ERROR and row["read_error"]:
        return f"{shown} ({row['read_error']})"
    if rule == "no_validation_test_overlap":
        twins = by_path[(by_path["split"] == "test") & (by_path["sha256"] == row["sha256"])]
        return f"{shown} (same content as {', '.join(twins.index[:3])})"
    if rule == "pixel_format" and row["mode"]:
        return f"{shown} (mode {row['mode']})"
    if rule == "mask_matches_image_size" and row["image_path"] in by_path.index:
        image = by_path.loc[row["image_path"]]
        return f"{shown} ({row['width']}x{row['height']}, image {image['width']}x{image['height']})"
    return shown


def _result(tool: str, category: str, rule: str, message: str, examples: list[str]) -> RuleResult:
    return RuleResult(
        tool=tool,
        category=category,
        rule=rule,
        passed=not examples,
        failing_count=len(examples),
        examples=examples[:MAX_EXAMPLES],
        message=message,
    )


def validate_manifest(
    manifest: pd.DataFrame, spec: DatasetSpec, min_images: Mapping[str, int] | None = None
) -> ValidationReport:
    """Run the pandera schema (lazily: every failure) and the GX suite over `manifest`.

    `min_images` overrides `checks.dataset_expectations.MIN_IMAGES` per split.
    """
    report = ValidationReport(dataset=f"{spec.kind}:{spec.root}")
    report.rules.extend(_pandera_rules(manifest, spec))
    gx_rules, notes = run_dataset_suite(manifest, spec, min_images)
    report.rules.extend(gx_rules)
    report.notes.extend(notes)
    if not spec.masks_expected:
        report.notes.append(
            "no ground_truth/ masks in some categories: pixel metrics not available"
        )
    if spec.kind == "demo":
        report.notes.append(
            "demo dataset: synthetic defects on scikit-image textures, not MVTec AD"
        )
    report.dataset_hash = dataset_hash(manifest, spec.kind)
    log.info(
        "validated %s: %d files, %d of %d rules failed",
        spec.root, len(manifest), len(report.failures), len(report.rules),
    )  # fmt: skip
    return report


def validate_dataset(
    spec: DatasetSpec, cache_path: Path | None = None, validation_dir: str | Path | None = None
) -> tuple[pd.DataFrame, ValidationReport]:
    """Build the manifest of `spec` (cached at `cache_path`, if given) and validate it.

    `validation_dir` (a profile's `validation.directory`) joins the manifest as category
    `<validation>`: the same file rules, plus no content shared with any test image."""
    manifest = build_manifest(spec, cache_path=cache_path)
    if validation_dir:
        extra = build_validation_manifest(validation_dir, cache_path=cache_path)
        manifest = pd.concat([manifest, extra], ignore_index=True).astype(manifest.dtypes)
    return manifest, validate_manifest(manifest, spec)
