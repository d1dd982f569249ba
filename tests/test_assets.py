"""The asset layer with the real download code (huggingface_hub's `hf_hub_download`,
anomalib's `download_and_extract`) against real HTTP servers on 127.0.0.1.

The hub's endpoint is pointed at the local server with `HF_ENDPOINT`; anomalib's own
`DownloadInfo` objects get the local URL (and, where a test wants it, a wrong hash).
Nothing is mocked between the asset layer and the socket, and nothing reaches the
internet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from anomalib.data.utils import DownloadInfo
from anomalib.models.image.efficient_ad import lightning_model as efficientad_module
from asset_files import imagenette_archive, served, teacher_archive, timm_checkpoint
from asset_server import AssetServer, StallServer, closed_port_url

from tasks.assets import (
    ASSETS_DIR_ENV,
    AssetSettings,
    MissingAssetsError,
    efficientad_teachers,
    imagenette,
    prepare_assets,
    resolve_asset,
    timm_backbone,
)
from tasks.assets.base import sha256_of
from tasks.models.registry import required_assets
from tasks.runtime.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
RESNET18_REPO = "timm/resnet18.a1_in1k"  # timm's hf_hub_id for resnet18
RESNET18_PATH = f"/{RESNET18_REPO}/resolve/main/model.safetensors"


@pytest.fixture(scope="module")
def resnet18():
    return timm_checkpoint("resnet18")


@pytest.fixture(scope="module")
def teacher_zip():
    return teacher_archive()


@pytest.fixture
def server():
    with AssetServer() as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AssetSettings:
    from huggingface_hub import constants

    monkeypatch.delenv(ASSETS_DIR_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return AssetSettings(dir=str(tmp_path / "assets"), timeout_s=2.0)


def _teacher(settings: AssetSettings, url: str, hashsum: str):
    info = DownloadInfo(name="efficientad_pretrained_weights.zip", url=url, hashsum=hashsum)
    return efficientad_teachers(settings, info=info)


def _files_under(root: Path) -> list[Path]:
    """Files left in a cache folder, the lock files aside."""
    return [p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts]


# --- timm backbones through the hub ---------------------------------------------------


def test_hub_backbone_fetched_once_then_loaded_by_timm_offline(
    server, settings, resnet18, monkeypatch
):
    checkpoint, state = resnet18
    sha = server.add_hub_file(RESNET18_REPO, "model.safetensors", checkpoint.data)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    asset = timm_backbone("resnet18", settings)
    assert not asset.present()

    status = resolve_asset(asset, settings)

    assert status.present and status.fetched, status.problem
    assert sha256_of(status.path) == sha == status.sha256
    assert status.size == len(checkpoint.data)
    assert str(status.path).startswith(str(settings.hub_cache()))
    assert server.count("GET", RESNET18_PATH) == 1

    server.stop()  # a second run finds it in the cache, with no source to ask
    again = resolve_asset(timm_backbone("resnet18", settings), settings)
    assert again.present and not again.fetched and again.path == status.path

    # what anomalib's TimmFeatureExtractor does: timm.create_model(name, pretrained=True),
    # here in a fresh process with huggingface_hub offline and the cache pointed there
    code = (
        "import timm, torch;"
        "m = timm.create_model('resnet18', pretrained=True);"
        "print(repr(float(m.conv1.weight.double().sum())))"
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(settings.hub_cache()),
        HF_ENDPOINT=closed_port_url(),
        PYTHONPATH=str(REPO),
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(
        float(state["conv1.weight"].double().sum()), abs=1e-9
    )


def test_hub_falls_back_to_pytorch_model_bin_as_timm_does(server, settings, monkeypatch):
    """A repository without model.safetensors: timm then loads pytorch_model.bin."""
    data = served(b"a pickled state dict" * 1000)
    server.add_hub_file(RESNET18_REPO, "pytorch_model.bin", data.data)
    monkeypatch.setenv("HF_ENDPOINT", server.url)

    status = resolve_asset(timm_backbone("resnet18", settings), settings)

    assert status.present and status.path.name == "pytorch_model.bin", status.problem
    assert sha256_of(status.path) == data.sha256


# --- anomalib's archives ---------------------------------------------------------------


def test_teacher_archive_from_anomalib_download_info_then_cached(
    server, settings, teacher_zip, monkeypatch
):
    archive, states = teacher_zip
    url = server.add_file("efficientad_pretrained_weights.zip", archive.data)
    # anomalib's own DownloadInfo, pointed at the local server
    monkeypatch.setattr(efficientad_module.WEIGHTS_DOWNLOAD_INFO, "url", url)
    monkeypatch.setattr(efficientad_module.WEIGHTS_DOWNLOAD_INFO, "hashsum", archive.sha256)
    asset = efficientad_teachers(settings)
    assert asset.source == url and not asset.present()

    status = resolve_asset(asset, settings)

    assert status.present and status.fetched, status.problem
    assert server.count("GET", "/files/efficientad_pretrained_weights.zip") == 1
    assert status.path == settings.anomalib_weights_dir() / "efficientad_pretrained_weights"
    for size, state in states.items():
        # as anomalib's prepare_pretrained_model loads it
        loaded = torch.load(asset.teacher_file(size), map_location="cpu", weights_only=True)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert status.sha256 == archive.sha256  # recorded in the marker
    leftovers = sorted(p.name for p in asset.root.iterdir())
    assert leftovers == sorted(["efficientad_pretrained_weights", asset.marker.name])
    assert not list(asset.cache_root.glob(".staging-*"))  # no staging folder, no archive

    server.stop()
    again = resolve_asset(efficientad_teachers(settings), settings)
    assert again.present and not again.fetched


def test_imagenette_archive_extracted_where_efficientad_reads_it(server, settings):
    archive = imagenette_archive()
    url = server.add_file("imagenette2.tgz", archive.data)
    info = DownloadInfo(name="imagenette2.tgz", url=url, hashsum=archive.sha256)
    asset = imagenette(settings, info=info)

    status = resolve_asset(asset, settings)

    assert status.present, status.problem
    from torchvision.datasets import ImageFolder

    # EfficientAd(imagenet_dir=asset.path) reads it as anomalib does: ImageFolder(imagenet_dir)
    assert len(ImageFolder(asset.path)) == 4


def test_carried_archive_is_verified_and_extracted_without_download(settings, teacher_zip):
    archive, _ = teacher_zip
    asset = _teacher(
        settings, closed_port_url() + "/efficientad_pretrained_weights.zip", archive.sha256
    )
    asset.root.mkdir(parents=True)
    (asset.root / asset.archive_name).write_bytes(archive.data)

    status = resolve_asset(asset, settings)

    assert status.present, status.problem
    assert not (asset.root / asset.archive_name).exists()


# --- refusals: a wrong hash, a silent server, a 404, an offline host, 'never' ------------


def test_archive_with_wrong_hash_refused_and_removed(server, settings, teacher_zip):
    archive, _ = teacher_zip
    url = server.add_file("efficientad_pretrained_weights.zip", archive.data)
    asset = _teacher(settings, url, "0" * 64)

    status = resolve_asset(asset, settings)

    assert not status.present
    assert "hash mismatch" in status.problem and "removed" in status.problem
    assert server.count("GET", "/files/efficientad_pretrained_weights.zip") == 1
    assert _files_under(asset.cache_root) == []  # nor in a staging folder beside it
    assert not asset.present()


def test_hub_file_with_wrong_hash_refused_and_removed(server, settings, monkeypatch):
    data = served(b"weights" * 10_000)
    server.add_hub_file(RESNET18_REPO, "model.safetensors", data.data, advertised_sha256="a" * 64)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    asset = timm_backbone("resnet18", settings)

    status = resolve_asset(asset, settings)

    assert not status.present
    assert "hash mismatch" in status.problem and "a" * 64 in status.problem
    assert not asset.present()
    assert [p for p in _files_under(asset.path) if p.parent.name == "blobs"] == []
    assert not list(asset.path.glob("snapshots/*/model.safetensors"))


def test_carried_archive_with_wrong_hash_refused_and_removed(settings, teacher_zip):
    archive, _ = teacher_zip
    asset = _teacher(settings, closed_port_url() + "/x.zip", archive.sha256)
    asset.root.mkdir(parents=True)
    carried = asset.root / asset.archive_name
    carried.write_bytes(archive.data[:-10] + b"corrupted!")

    status = resolve_asset(asset, settings)

    assert not status.present and "hash mismatch" in status.problem
    assert _files_under(asset.cache_root) == []  # nor in a staging folder beside it


@pytest.mark.parametrize("kind", ["archive", "hub"])
def test_silent_server_fails_within_the_timeout(kind, settings, monkeypatch):
    settings = settings.model_copy(update={"timeout_s": 1.0})
    with StallServer() as stall:
        if kind == "archive":
            asset = _teacher(settings, stall.url + "/efficientad_pretrained_weights.zip", "0" * 64)
        else:
            monkeypatch.setenv("HF_ENDPOINT", stall.url)
            asset = timm_backbone("resnet18", settings)
        started = time.perf_counter()
        status = resolve_asset(asset, settings)
        elapsed = time.perf_counter() - started

    assert not status.present
    assert elapsed < 3 * settings.timeout_s, f"took {elapsed:.1f} s"
    assert "accepted the connection but did not answer within 1 s" in status.problem
    assert "offline" not in status.problem and not status.offline


def test_404_named_as_such(server, settings, monkeypatch):
    archive = _teacher(settings, server.url + "/files/absent.zip", "0" * 64)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.add_hub_repo(RESNET18_REPO)  # the repository, without its weights
    backbone = timm_backbone("resnet18", settings)
    unknown_repo = timm_backbone("wide_resnet50_2", settings)

    statuses = [resolve_asset(a, settings) for a in (archive, backbone, unknown_repo)]

    assert "HTTP 404 (not found) from " + server.url + "/files/absent.zip" in statuses[0].problem
    assert "HTTP 404" in statuses[1].problem and "model.safetensors" in statuses[1].problem
    assert "HTTP 404" in statuses[2].problem
    assert not any(s.present or s.offline or "offline" in s.problem for s in statuses)


def test_unreachable_source_is_called_offline(settings, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    archive = _teacher(settings, closed_port_url() + "/x.zip", "0" * 64)
    for asset in (archive, timm_backbone("resnet18", settings)):
        status = resolve_asset(asset, settings)
        assert status.offline and "cannot connect to 127.0.0.1" in status.problem
        assert "offline" in status.problem


def test_never_policy_makes_no_request(server, settings, teacher_zip, monkeypatch):
    archive, _ = teacher_zip
    url = server.add_file("efficientad_pretrained_weights.zip", archive.data)
    server.add_hub_file(RESNET18_REPO, "model.safetensors", b"x")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    never = settings.model_copy(update={"download": "never"})

    for asset in (_teacher(never, url, archive.sha256), timm_backbone("resnet18", never)):
        status = resolve_asset(asset, never)
        assert not status.present and "'never'" in status.problem
    assert server.total_requests == 0


# --- what a profile needs, and the pre-flight check ------------------------------------


def _needs(profile: str, models=("patchcore", "efficientad"), overrides=None, **kwargs):
    plan = required_assets(
        load_profile(profile, overrides), models, overrides=overrides, whole_dataset=True, **kwargs
    )
    return {n.asset.name: n.fallback for n in plan.needs}, plan


def test_required_assets_follow_the_profiles():
    paper, plan = _needs("paper")
    assert paper == {"wide_resnet50_2": None, "efficientad-teacher": None, "imagenette": None}
    assert plan.fetch_command == (
        "python -m flows.fetch_assets --profile paper --models patchcore,efficientad"
    )
    quick, _ = _needs("quick")
    assert quick.keys() == paper.keys() and all(quick.values())  # each has a fallback
    assert "EfficientNet-Lite0" in quick["wide_resnet50_2"]

    lite0, _ = _needs(
        "quick", ["patchcore"], overrides={"patchcore": {"backbone": "efficientnet_lite0"}}
    )
    assert lite0 == {}
    resnet18 = {"patchcore": {"backbone": "resnet18"}}
    named, plan = _needs("paper", ["patchcore"], overrides=resnet18)
    assert named == {"resnet18": None}
    assert '--overrides \'{"patchcore":{"backbone":"resnet18"}}\'' in plan.fetch_command
    named, _ = _needs("quick", ["patchcore"], overrides=resnet18)  # quick may substitute it
    assert "EfficientNet-Lite0" in named["resnet18"]
    local, _ = _needs(
        "paper", ["efficientad"], overrides={"efficientad": {"teacher_weights": "/x.pth"}}
    )
    assert local == {"imagenette": None}
    substitute, _ = _needs("paper", overrides={"assets": {"allow_fallback": True}})
    assert all(substitute.values())

    mvtec, plan = _needs("paper", ["efficientad"], dataset="mvtec", categories=["grid", "leather"])
    assert mvtec["mvtec_ad"] is None
    assert "--dataset mvtec --categories grid,leather" in plan.fetch_command
    dataset = plan.needs[-1].asset
    assert "grid/ground_truth" in dataset.contents and "bottle/train" not in dataset.contents

    with pytest.raises(ValueError, match="unknown model 'padim'"):
        _needs("paper", ["padim"])


def test_mvtec_subset_in_shared_counts_as_present(shared_mvtec):
    _, plan = _needs(
        "paper", ["patchcore"], dataset="mvtec", categories=["grid", "leather"],
        data_root=shared_mvtec,
    )  # fmt: skip
    assert plan.needs[-1].asset.present()
    _, plan = _needs(
        "paper", ["patchcore"], dataset="mvtec", categories=["bottle"], data_root=shared_mvtec
    )
    assert not plan.needs[-1].asset.present()


def test_paper_preflight_names_every_missing_asset(settings, monkeypatch):
    offline = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", offline)
    for info in (
        efficientad_module.WEIGHTS_DOWNLOAD_INFO,
        efficientad_module.IMAGENETTE_DOWNLOAD_INFO,
    ):
        monkeypatch.setattr(info, "url", f"{offline}/{info.url.rsplit('/', 1)[-1]}")

    plan = required_assets(load_profile("paper"), ["patchcore", "efficientad"], settings=settings)
    started = time.perf_counter()
    with pytest.raises(MissingAssetsError) as caught:
        prepare_assets(plan)
    assert time.perf_counter() - started < 10

    message = str(caught.value)
    for need in plan.needs:
        assert need.asset.name in message and str(need.asset.path) in message
    assert "3 assets needed by this run are missing" in message
    command = "python -m flows.fetch_assets --profile paper --models patchcore,efficientad"
    assert f"{command} --dest {settings.dir}" in message
    assert "This host is offline" in message
    assert {s.asset.name for s in caught.value.missing} == {n.asset.name for n in plan.needs}

    # quick allows its fallbacks: the same host passes, every asset reported missing ...
    substitutes = settings.model_copy(update={"allow_fallback": True})
    quick = required_assets(
        load_profile("quick"), ["patchcore", "efficientad"], settings=substitutes
    )
    statuses = prepare_assets(quick)
    assert not any(s.present for s in statuses.values())
    # ... unless the policy is 'required'
    required = replace(quick, settings=substitutes.model_copy(update={"download": "required"}))
    with pytest.raises(MissingAssetsError):
        prepare_assets(required)


def test_assets_dir_setting_and_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ASSETS_DIR_ENV, str(tmp_path / "carried"))
    from_env = AssetSettings()
    assert from_env.hub_cache() == tmp_path / "carried" / "huggingface" / "hub"
    assert from_env.anomalib_weights_dir() == tmp_path / "carried" / "anomalib" / "pre_trained"
    assert imagenette(from_env).path == tmp_path / "carried" / "datasets" / "imagenette"
    explicit = AssetSettings(dir=str(tmp_path / "mine"))
    assert explicit.root() == tmp_path / "mine"
    with pytest.raises(ValueError):
        AssetSettings(download="sometimes")


def test_fetch_plan_for_a_dataset_alone_and_for_every_model(tmp_path):
    from flows.fetch_assets import plan_fetch

    alone = plan_fetch("paper", [], "mvtec", ["grid"], data_root=str(tmp_path), dest=str(tmp_path))
    assert [n.asset.name for n in alone.needs] == ["mvtec_ad"]
    assert alone.fetch_command == (
        "python -m flows.fetch_assets --profile paper --models none --dataset mvtec "
        f"--categories grid --data-root {tmp_path} --dest {tmp_path}"
    )
    every = plan_fetch("quick", None, dest=str(tmp_path))  # no substitute when fetching ahead
    assert [(n.asset.name, n.fallback) for n in every.needs] == [
        ("wide_resnet50_2", None),
        ("efficientad-teacher", None),
        ("imagenette", None),
    ]
    assert every.settings.download == "required" and not every.settings.allow_fallback


def test_a_run_that_cannot_start_downloads_nothing(server, settings, teacher_zip, monkeypatch):
    archive, _ = teacher_zip
    url = server.add_file("efficientad_pretrained_weights.zip", archive.data)
    monkeypatch.setattr(efficientad_module.WEIGHTS_DOWNLOAD_INFO, "url", url)
    monkeypatch.setattr(efficientad_module.WEIGHTS_DOWNLOAD_INFO, "hashsum", archive.sha256)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.add_hub_repo("timm/wide_resnet50_2.racm_in1k")  # without its weights: a 404
    plan = required_assets(
        load_profile("paper", {"efficientad": {"imagenet_dir": "/local/imagenette"}}),
        ["patchcore", "efficientad"],
        settings=settings,
    )

    with pytest.raises(MissingAssetsError) as caught:
        prepare_assets(plan)

    assert [s.asset.name for s in caught.value.missing] == ["wide_resnet50_2"]
    assert "HTTP 404" in str(caught.value) and "offline" not in str(caught.value).lower()
    assert server.count("HEAD", "/files/efficientad_pretrained_weights.zip") == 1  # it answers
    assert server.count("GET", "/files/efficientad_pretrained_weights.zip") == 0  # not fetched
    assert not efficientad_teachers(settings).present()


def test_where_substitutes_are_allowed_a_missing_asset_without_one_fails_only_its_cells(
    settings, monkeypatch
):
    """quick/cpu: a model whose weights have no substitute fails its own cells (its build
    names the asset), the others go on; the paper profile fails the run before training."""
    from tasks.assets import Need, plan_assets

    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    need = Need(timm_backbone("resnet18", settings), "a model without a substitute")
    allowed = settings.model_copy(update={"allow_fallback": True})
    statuses = prepare_assets(plan_assets([need], allowed, "FETCH"))
    assert not statuses["resnet18"].present and statuses["resnet18"].offline
    with pytest.raises(MissingAssetsError, match="resnet18"):
        prepare_assets(plan_assets([need], settings, "FETCH"))
