"""The dataset gate as both flows run it: prepare the dataset, validate its manifest,
store every rule's result, and publish it to the Prefect UI.

    spec, report = check_dataset("demo", None, ["demo_grid"], store, run_id)
    if spec is None or not report.passed:
        raise DatasetValidationFailed(report.summary())

Bad data never raises here: a dataset that cannot even be opened is a failed
`dataset_layout` rule, stored like any other.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from checks.rule_result import RuleResult
from tasks.data.datasets import prepare_dataset
from tasks.results.store.result_store import ResultStore
from tasks.results.types import DatasetError, DatasetSpec, ValidationReport, printable
from tasks.runtime.asset_settings import AssetSettings
from tasks.validation.rules import validate_dataset


class DatasetValidationFailed(RuntimeError):
    """The gate refused the dataset; the message is the readable summary."""


@task(name="prepare-dataset", retries=0)
def prepare_dataset_task(
    dataset: str,
    data_root: str | None,
    categories: list[str] | None,
    assets: AssetSettings | None = None,
) -> DatasetSpec:
    return prepare_dataset(dataset, data_root, categories, assets)


@task(name="validate-manifest", retries=0)
def validate_task(
    spec: DatasetSpec, cache_path: Path | None, validation_dir: str | None = None
) -> ValidationReport:
    _, report = validate_dataset(spec, cache_path=cache_path, validation_dir=validation_dir)
    return report


def layout_failure(
    dataset: str, categories: list[str] | None, err: DatasetError
) -> ValidationReport:
    """A dataset that cannot even be opened is a failed validation, stored like any other."""
    rule = RuleResult(
        tool="layout",
        category=",".join(categories or []) or "*",
        rule="dataset_layout",
        passed=False,
        failing_count=1,
        examples=[],
        message=str(err),
    )
    return ValidationReport(dataset=dataset, rules=[rule])


def code_block(text: str) -> str:
    """`text` as a markdown code block whose fence no line of it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def markdown_text(text: str) -> str:
    """`text` as one line of literal markdown: control characters shown as escapes,
    markdown and HTML punctuation backslash-escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", printable(text))


def validation_markdown(report: ValidationReport) -> str:
    """The gate's verdict for the UI; file names inside cannot break out of it."""
    verdict = "PASSED" if report.passed else "FAILED"
    notes = "".join(f"- {markdown_text(n)}\n" for n in report.notes)
    return f"## Dataset gate {verdict}\n\n{code_block(report.summary())}\n\n{notes}"


def publish_validation(report: ValidationReport, run_id: str) -> None:
    """Table + markdown artifacts: what the UI shows for the gate."""
    create_table_artifact(
        key="validation-results",
        table=[
            {
                "tool": r.tool,
                "category": printable(r.category),
                "rule": r.rule,
                "passed": r.passed,
                "failing": r.failing_count,
                "examples": "; ".join(printable(e) for e in r.examples[:3]),
                "message": printable(r.message),
            }
            for r in report.rules
        ],
        description=f"Dataset gate for run {run_id}: {report.summary().splitlines()[0]}",
    )
    create_markdown_artifact(
        key="validation-summary",
        markdown=validation_markdown(report),
        description="validation summary",
    )


def check_dataset(
    dataset: str,
    data_root: str | None,
    categories: list[str] | None,
    store: ResultStore,
    run_id: str,
    validation_dir: str | None = None,
    assets: AssetSettings | None = None,
) -> tuple[DatasetSpec | None, ValidationReport]:
    """Prepare (fetching MVTec AD where `assets`, the profile's, allow) + validate (with
    the profile's `validation.directory`, if any), store and publish the result; never
    raises on bad data."""
    logger = get_run_logger()
    cache_path = Path(store.db_path).parent / "manifest-cache"
    try:
        spec = prepare_dataset_task(dataset, data_root, categories, assets)
        report = validate_task(spec, cache_path, validation_dir)
    except DatasetError as err:
        spec, report = None, layout_failure(dataset, categories, err)
    root = Path(spec.root).resolve() if spec is not None else None
    store.write_validations(run_id, report, data_root=root)
    publish_validation(report, run_id)
    logger.info(report.summary())
    return spec, report
