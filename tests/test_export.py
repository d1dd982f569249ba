"""A trained PatchCore, exported, scores images as the trained model did, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.results.types import DatasetSpec
from tasks.runtime.profiles import load_profile
from tasks.training.coordinator import train_and_evaluate
from tests.cheap_inference import FAST_INFERENCE
from tests.conftest import build_mvtec_layout

REPO = Path(__file__).resolve().parents[1]


def test_exported_patchcore_scores_as_the_trained_model_in_a_fresh_process(
    tmp_path: Path,
) -> None:
    root = build_mvtec_layout(tmp_path / "data", n_train=8, defects={"scratch": 2}, size=64)
    spec = DatasetSpec(kind="folder", root=root, categories=("widget",))
    profile = load_profile(
        "quick",
        {
            "patchcore": {"image_size": 64, "coreset_sampling_ratio": 0.5},
            "latency_iters": 3,
            "overlays": 0,
            "inference": FAST_INFERENCE,
            "weights_dir": str(tmp_path / "weights"),
        },
    )
    result = train_and_evaluate("patchcore", "widget", spec, profile, tmp_path / "run")

    assert [(s.stage, s.status) for s in result.stages][0] == ("export", "completed")
    trained = {s["path"]: s["score"] for s in result.scores}
    images = sorted(trained)
    script = (
        "import json, sys; from tasks.training.export import load_exported; "
        "m = load_exported(sys.argv[1]); "
        "print(json.dumps([m.score(p) for p in sys.argv[2:]]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, result.artifacts["torch"], *images],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    exported = json.loads(done.stdout.strip().splitlines()[-1])
    # the exported module's raw score is the trained model's own test score
    assert exported == pytest.approx([trained[p] for p in images], rel=1e-3)
    assert len(set(exported)) > 1  # real per-image scores, not a constant
