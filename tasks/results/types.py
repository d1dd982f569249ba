"""Value types that move between the pipeline stages.

Every stage takes and returns these plain dataclasses (Kedro-style explicit wiring):
the dataset layer returns a `DatasetSpec`, the gate a `ValidationReport`, training a
`ModelResult`. The flow is the only writer: it hands them to `tasks.results.store.result_store`.

Example:
    >>> report = ValidationReport(dataset="demo", rules=[RuleResult(
    ...     tool="pandera", category="demo_grid", rule="file_opens_as_image",
    ...     passed=False, failing_count=1, examples=["a.png"], message="...")])
    >>> report.passed
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from checks.rule_result import RuleResult

DatasetKind = Literal["demo", "mvtec", "folder"]


class DatasetError(ValueError):
    """A dataset cannot be used as given (missing path, unknown category, bad layout).

    The message names the path and says what to do; the CLI prints it without a traceback.
    """


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and what kind it is. Layout is MVTec AD's:
    <root>/<category>/train/good, <root>/<category>/test/<good|defect>/,
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png."""

    kind: DatasetKind
    root: Path
    categories: tuple[str, ...]
    masks_expected: bool = True

    def category_dir(self, category: str) -> Path:
        return self.root / category


@dataclass
class ValidationReport:
    dataset: str
    rules: list[RuleResult] = field(default_factory=list)
    dataset_hash: str = ""  # sha256 over the manifest's (path, sha256) pairs
    notes: list[str] = field(default_factory=list)  # e.g. "MVTec grid is a subset: 39 of 342"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def summary(self) -> str:
        """Readable text: one line per failed rule with the files that broke it."""
        name = printable(self.dataset)
        if self.passed:
            return f"dataset {name}: all {len(self.rules)} rules passed"
        lines = [f"dataset {name}: {len(self.failures)} of {len(self.rules)} rules failed"]
        for r in self.failures:
            shown = ", ".join(printable(e) for e in r.examples[:5])
            lines.append(
                f"- [{r.tool}] {r.rule} ({printable(r.category)}): {printable(r.message)}; "
                f"{r.failing_count} failing: {shown}"
            )
        return "\n".join(lines)


def printable(text: str) -> str:
    """`text` with every non-printable character (newline, escape, NUL...) shown as its
    Python escape, so a file name can neither break a line nor drive a terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


@dataclass
class Recovery:
    """One rollback during an attempt: the spike, the checkpoint restored, the new lr."""

    attempt: int
    spike_step: int  # the step that confirmed the spike
    onset_step: int  # its first flagged step
    restored_step: int  # the step of the checkpoint restored
    skipped_batches: int  # batches between the checkpoint and the spike, not replayed
    extra_steps: int  # steps added back to the plan for them
    loss_name: str
    value: float | None
    magnitude: float | None
    reason: str  # divergence | level_shift | non_finite
    learning_rate_before: float | None
    learning_rate_after: float | None

    def describe(self) -> str:
        return (
            f"{self.loss_name} spiked at step {self.onset_step} ({self.reason}, confirmed at "
            f"step {self.spike_step}): rolled back to the checkpoint of step "
            f"{self.restored_step}, skipped {self.skipped_batches} batches, learning rate "
            f"{self.learning_rate_before:.3g} -> {self.learning_rate_after:.3g}"
        )


@dataclass
class TrainingAttempt:
    """One try at training one (model, category); every attempt is kept."""

    attempt: int
    seed: int
    learning_rate: float | None
    steps: int  # optimizer steps actually run
    end_reason: str  # "completed", "loss_spike", "non_finite_loss", "implausible_validation"
    # (a spike that was rolled back does not end the attempt: see `recoveries`)
    chosen: bool = False
    spike_step: int | None = None
    spike_loss_name: str | None = None
    spike_value: float | None = None
    spike_magnitude: float | None = None  # robust z-score or ratio to the rolling median
    retry_reason: str | None = None  # why the next attempt was started
    validation_metric: float | None = None  # validation image AUROC (raw scores, float64)
    validation_low: float | None = None  # its Hanley-McNeil 95 % interval
    validation_high: float | None = None
    validation_pairs: int | None = None  # normal x anomalous validation pairs behind it
    losses: list[tuple[int, str, float]] = field(default_factory=list)  # (step, name, value)
    recoveries: list[Recovery] = field(default_factory=list)  # rollbacks during the attempt


@dataclass
class LatencyResult:
    """One inference path of one (model, category): how fast, and how accurate.

    Timing figures are None when the path failed or was skipped (`status`, `error`)."""

    p50_ms: float | None  # batch-1 latency, decode included
    p95_ms: float | None
    throughput_ips: float | None  # images per second at `batch_size`
    batch_size: int
    device: str
    threads: int
    peak_memory_mb: float | None
    precision: str  # "fp32", "bf16", "int8"
    path: (
        str  # "torch-fp32", "openvino-int8", "anomalib-torch", ... (tasks.inference.measure.PATHS)
    )
    image_auroc: float | None = None  # this path's scores on the complete test split
    auroc_delta: float | None = None  # image_auroc minus the torch-fp32 path's
    status: str = "ok"  # ok | failed | skipped (the device cannot run it)
    error: str | None = None  # why it failed or was skipped, or what was not measured
    timed_runs: int | None = None  # batch-1 runs behind p50/p95
    warmup_runs: int | None = None
    setup_seconds: float | None = None  # conversion (first OpenVINO path), int8, compile
    calibration_paths: list[str] = field(default_factory=list)  # int8: training images only
    hardware: str | None = None  # what it ran on: tasks.runtime.hardware.device_name(device)


# The deployable path is the fastest whose image AUROC is this close to fp32's.
AUROC_TOLERANCE = 0.005


def deployable(
    rows: Sequence[LatencyResult], tolerance: float = AUROC_TOLERANCE
) -> LatencyResult | None:
    """The fastest (batch-1 p50) of this project's paths whose image AUROC is within
    `tolerance` of the torch-fp32 path's; anomalib's own paths are the comparison, not
    candidates. None when no path qualifies."""
    candidates = [
        r
        for r in rows
        if r.status == "ok"
        and r.p50_ms is not None
        and not r.path.startswith("anomalib-")
        and r.auroc_delta is not None
        and abs(r.auroc_delta) <= tolerance
    ]
    return min(candidates, key=lambda r: r.p50_ms, default=None)


@dataclass
class StageOutcome:
    """A stage after the metrics that can fail on its own (export, latency): stored
    either way, with its error, so a missing figure is never silent."""

    stage: str  # export | latency
    status: str  # completed | failed | cached
    error: str | None = None
    seconds: float | None = None


@dataclass
class ModelResult:
    """Everything one (model, category) produced. `metrics` values are None when a
    metric is not available (e.g. pixel metrics without masks), never zero."""

    model: str
    category: str
    profile: str
    settings: dict  # the profile's settings for this model, as recorded
    weights: dict  # provenance: {"backbone": ..., "source": "pretrained"|"fallback", ...}
    device: str
    metrics: dict[str, float | None]  # image_auroc, pixel_auroc, image_f1, aupro, ...
    attempts: list[TrainingAttempt] = field(default_factory=list)
    roc_points: list[tuple[str, float, float]] = field(default_factory=list)  # level, fpr, tpr
    scores: list[dict] = field(default_factory=list)  # path, label, defect_type, score
    latency: list[LatencyResult] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> path
    train_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    stages: list[StageOutcome] = field(default_factory=list)
    trained_in: str | None = None  # run id of the run that trained it
    cached_from: str | None = None  # set when served from the cache: that run's id
    worker: str = ""  # who ran it: Dask worker name@address, or host:pid in the flow's process
