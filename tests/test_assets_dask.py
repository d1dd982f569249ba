"""Two Dask workers (a real `distributed.LocalCluster`, worker processes on 127.0.0.1)
ask for the same assets at the same moment, into one shared cache folder: each asset is
downloaded once (GET requests counted on the local server), the other worker waits on
the asset's file lock and then finds it present."""

from __future__ import annotations

import pytest
from anomalib.data.utils import DownloadInfo
from asset_files import served, teacher_archive
from asset_server import AssetServer

from tasks.assets import (
    ASSETS_DIR_ENV,
    AssetSettings,
    efficientad_teachers,
    resolve_asset,
    timm_backbone,
)

pytestmark = pytest.mark.slow  # a real Dask cluster of two worker processes
HUB_REPO = "timm/resnet18.a1_in1k"


def test_two_workers_fetch_each_asset_once(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    teacher, _ = teacher_archive()
    backbone = served(b"resnet18 weights" * 10_000)
    # each GET waits before its body, so that the second worker's request would overlap
    with AssetServer(delay_s=1.0) as server:
        url = server.add_file("efficientad_pretrained_weights.zip", teacher.data)
        server.add_hub_file(HUB_REPO, "model.safetensors", backbone.data)
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # inherited by the worker processes
        monkeypatch.delenv(ASSETS_DIR_ENV, raising=False)
        settings = AssetSettings(dir=str(tmp_path / "shared"), timeout_s=5.0)
        info = DownloadInfo(
            name="efficientad_pretrained_weights.zip", url=url, hashsum=teacher.sha256
        )
        assets = [efficientad_teachers(settings, info=info), timm_backbone("resnet18", settings)]

        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            workers = sorted(client.scheduler_info()["workers"])
            assert len(workers) == 2
            futures = {
                (asset.name, worker): client.submit(
                    resolve_asset,
                    asset,
                    settings,
                    workers=[worker],
                    allow_other_workers=False,
                    pure=False,
                )
                for asset in assets
                for worker in workers
            }
            statuses = {key: future.result(timeout=120) for key, future in futures.items()}

        assert server.count("GET", "/files/efficientad_pretrained_weights.zip") == 1
        assert server.count("GET", f"/{HUB_REPO}/resolve/main/model.safetensors") == 1

    for asset in assets:
        pair = [statuses[(asset.name, worker)] for worker in workers]
        assert all(s.present for s in pair), [s.problem for s in pair]
        assert sorted(s.fetched for s in pair) == [False, True]  # one fetched, one found it
        assert pair[0].path == pair[1].path
