"""One (model, category) cell on whichever worker runs it (`run_cell`), and its log line.

The flow submits cells to its task runner (`tasks.runtime.cluster`); each cell checks
that its worker sees the dataset and the run's output folder, trains, and returns a
`ModelResult` naming the worker and device.

Example:
    >>> result = run_cell("patchcore", "grid", spec, profile, run_root, fingerprint)
    >>> result.worker, result.device
    ('1@tcp://10.0.0.7:40001', 'cuda:0 <GPU name> (CUDA_VISIBLE_DEVICES=1)')
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.results.types import DatasetSpec, ModelResult
from tasks.runtime.cluster import device_identity, require_shared_paths, worker_identity
from tasks.runtime.profiles import Profile
from tasks.runtime.writes import as_write_failure

if TYPE_CHECKING:  # training pulls in anomalib and torch: `prefect deploy` need not
    from tasks.training.callbacks import Progress


def run_cell(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_root: Path,
    data_fingerprint: str,
    progress: Progress | None = None,
) -> ModelResult:
    """One (model, category) on whichever worker runs it; artifacts go to
    run_root/model/category and the result names the worker and device."""
    from tasks.training.coordinator import train_and_evaluate

    run_root = Path(run_root)
    require_shared_paths(spec.category_dir(category), data_fingerprint, run_root)
    cell_dir = run_root / model_name / category
    try:
        result = train_and_evaluate(
            model_name, category, spec, profile, cell_dir, progress=progress
        )
    except BaseException as err:
        failure = as_write_failure(err, cell_dir, f"{model_name}/{category}'s output")
        # nothing of a failed or stopped cell is stored: its files, some half-written, go
        shutil.rmtree(cell_dir, ignore_errors=True)
        if failure is err:
            raise
        raise failure from err
    return replace(result, worker=worker_identity(), device=device_identity(result.device))


def cell_summary(result: ModelResult) -> str:
    """One line per finished cell for the log and terminal."""
    auroc = result.metrics.get("image_auroc")
    shown = f"{auroc:.3f}" if isinstance(auroc, float) else "n/a"
    line = (
        f"{result.model}/{result.category}: image AUROC {shown}, fit {result.train_seconds:.1f} s, "
        f"worker {result.worker}, device {result.device}"
    )
    return f"{line} (cached from run {result.cached_from})" if result.cached_from else line
