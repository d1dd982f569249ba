"""A trained PatchCore, exported, scores images identically in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from anomalib.data import Folder
from anomalib.engine import Engine

from tasks.backbones import build_patchcore
from tasks.export import export_model, load_exported
from tasks.profiles import PatchCoreSettings
from tests.conftest import build_mvtec_layout

REPO = Path(__file__).resolve().parents[1]


def test_exported_patchcore_scores_the_same_in_a_fresh_process(tmp_path: Path) -> None:
    root = build_mvtec_layout(tmp_path / "data", n_train=6, defects={"scratch": 2}, size=64)
    category = root / "widget"
    datamodule = Folder(
        name="widget",
        root=category,
        normal_dir=category / "train" / "good",
        abnormal_dir=category / "test" / "scratch",
        normal_test_dir=category / "test" / "good",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    model, _ = build_patchcore(PatchCoreSettings(image_size=64, coreset_sampling_ratio=0.5))
    engine = Engine(
        default_root_dir=tmp_path / "run",
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)

    artifacts = export_model(model, engine, tmp_path / "export")
    assert Path(artifacts["checkpoint"]).is_file()
    images = sorted(str(p) for p in (category / "test").rglob("*.png"))
    in_process = [load_exported(artifacts["torch"]).score(p) for p in images]

    script = (
        "import json, sys; from tasks.export import load_exported; "
        "m = load_exported(sys.argv[1]); "
        "print(json.dumps([m.score(p) for p in sys.argv[2:]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, artifacts["torch"], *images],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh == in_process
    assert len(set(in_process)) > 1  # real per-image scores, not a constant
