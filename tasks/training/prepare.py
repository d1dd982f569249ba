"""The first stage of a cell: check the request, build the datamodule (`Prepared`).

Example:
    >>> prep = prepare("patchcore", "demo_grid", spec, load_profile("quick"), run_dir)
    >>> prep.label, prep.n_test
    ('patchcore/demo_grid', 20)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from anomalib.data import Folder
from lightning.pytorch import Callback

from tasks.data.datamodule import images_in, make_datamodule
from tasks.models import registry
from tasks.models.settings import ModelSettings
from tasks.results.types import DatasetError, DatasetSpec
from tasks.runtime.profiles import Profile
from tasks.training.callbacks import Progress, monotone


@dataclass
class Prepared:
    """What every stage of one (model, category) needs: data, settings, where to write."""

    model_name: str
    category: str
    profile: Profile
    settings: ModelSettings
    datamodule: Folder
    has_masks: bool
    n_test: int
    run_dir: Path
    report: Progress
    train_paths: list[Path]
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.category}"


def prepare(
    model_name: str,
    category: str,
    spec: DatasetSpec,
    profile: Profile,
    run_dir: Path,
    progress: Progress | None = None,
    callbacks: list[Callback] | None = None,
) -> Prepared:
    """Check the request and build the datamodule (test split complete, validation apart)."""
    model_name = registry.get(model_name).name
    if category not in spec.categories:
        raise DatasetError(
            f"category {category!r} is not in dataset {spec.root} ({spec.categories})"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = monotone(progress)
    report(0.0, f"{model_name}/{category}: preparing data")
    settings = registry.settings_for(model_name, profile)
    datamodule, has_masks, n_test = make_datamodule(
        spec, category, profile, settings.train_batch_size, work_dir=run_dir
    )
    return Prepared(
        model_name,
        category,
        profile,
        settings,
        datamodule,
        has_masks,
        n_test,
        run_dir,
        report,
        images_in(spec.category_dir(category) / "train" / "good"),
        list(callbacks or []),
    )
