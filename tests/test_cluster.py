"""Choosing where cells run, and a cell's refusal to run on a worker that cannot see
the flow's dataset copy or output folder. The real multi-process cluster is in
test_dask_cluster.py."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import types

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from tasks.data.datasets import MVTEC_CATEGORIES, expand_categories
from tasks.results.types import ModelResult
from tasks.runtime.cluster import (
    ClusterError,
    ClusterSpec,
    WorkerCannotSeePath,
    listing_fingerprint,
    parse_cluster,
    require_shared_paths,
    task_runner_for,
    worker_identity,
)
from tasks.training.cell import cell_summary


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        (None, ClusterSpec("none")),
        ("none", ClusterSpec("none")),
        ("local:3", ClusterSpec("local", workers=3)),
        ("tcp://10.0.0.5:8786", ClusterSpec("address", address="tcp://10.0.0.5:8786")),
        ("cuda", ClusterSpec("cuda")),
    ],
)
def test_cluster_settings_parse(text, spec):
    assert parse_cluster(text) == spec


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("local:0", "local:N"),
        ("local:two", "local:N"),
        ("tcp://sched", "tcp://host:port"),
        ("gpu", "none | local:N | tcp://host:port | cuda"),
    ],
)
def test_bad_cluster_settings_say_what_is_expected(text, says):
    with pytest.raises(ClusterError, match=says.replace("|", r"\|")):
        parse_cluster(text)


def test_runners_match_the_setting():
    assert isinstance(task_runner_for(parse_cluster("none")), ThreadPoolTaskRunner)
    local = task_runner_for(parse_cluster("local:2"))
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 2
    assert local.cluster_kwargs["threads_per_worker"] == 1
    remote = task_runner_for(parse_cluster("tcp://127.0.0.1:8786"))
    assert remote.address == "tcp://127.0.0.1:8786"


def test_cuda_cluster_without_dask_cuda_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    monkeypatch.setitem(sys.modules, "dask_cuda.utils", None)
    with pytest.raises(ClusterError, match=r"dask-cuda.*anomaly-benchmark\[gpu\]"):
        task_runner_for(parse_cluster("cuda"))


def test_cuda_cluster_on_a_host_without_gpus_is_refused(monkeypatch):
    utils = types.ModuleType("dask_cuda.utils")
    utils.get_n_gpus = lambda: 0
    monkeypatch.setitem(sys.modules, "dask_cuda", types.ModuleType("dask_cuda"))
    monkeypatch.setitem(sys.modules, "dask_cuda.utils", utils)
    with pytest.raises(ClusterError, match="no GPU"):
        task_runner_for(parse_cluster("cuda"))


def test_all_means_every_mvtec_category():
    assert expand_categories("mvtec", ["all"]) == list(MVTEC_CATEGORIES)
    assert len(expand_categories("mvtec", ["ALL"])) == 15
    assert expand_categories("folder", ["all"]) is None  # every folder found
    assert expand_categories("mvtec", ["grid"]) == ["grid"]


def test_in_process_worker_is_host_and_pid():
    assert worker_identity() == f"{socket.gethostname()}:{os.getpid()}"


def test_a_worker_that_sees_the_same_paths_may_run_the_cell(make_dataset, tmp_path):
    category_dir = make_dataset() / "widget"
    run_root = tmp_path / "runs" / "run-1"
    run_root.mkdir(parents=True)
    require_shared_paths(category_dir, listing_fingerprint(category_dir), run_root)


def test_a_worker_without_the_dataset_fails_naming_itself_and_the_path(make_dataset, tmp_path):
    category_dir = make_dataset() / "widget"
    fingerprint = listing_fingerprint(category_dir)
    run_root = tmp_path / "runs" / "run-1"
    run_root.mkdir(parents=True)
    shutil.rmtree(category_dir)
    with pytest.raises(WorkerCannotSeePath) as err:
        require_shared_paths(category_dir, fingerprint, run_root)
    assert worker_identity() in str(err.value)
    assert f"data_root: {category_dir}" in str(err.value)


def test_a_worker_with_another_copy_of_the_data_fails(make_dataset, tmp_path):
    category_dir = make_dataset() / "widget"
    fingerprint = listing_fingerprint(category_dir)
    run_root = tmp_path / "runs" / "run-1"
    run_root.mkdir(parents=True)
    next((category_dir / "train" / "good").iterdir()).unlink()
    with pytest.raises(WorkerCannotSeePath, match="different"):
        require_shared_paths(category_dir, fingerprint, run_root)


def test_a_worker_without_the_output_folder_fails_and_creates_nothing(make_dataset, tmp_path):
    category_dir = make_dataset() / "widget"
    run_root = tmp_path / "runs" / "run-1"
    with pytest.raises(WorkerCannotSeePath, match=f"output_dir: {run_root}"):
        require_shared_paths(category_dir, listing_fingerprint(category_dir), run_root)
    assert not (tmp_path / "runs").exists()


def test_a_finished_cell_is_one_line_with_auroc_time_and_worker():
    result = ModelResult(
        model="patchcore",
        category="grid",
        profile="quick",
        settings={},
        weights={},
        device="cpu",
        metrics={"image_auroc": 0.98765},
        train_seconds=12.34,
        worker="w1@tcp://10.0.0.7:40001",
    )
    line = cell_summary(result)
    assert "\n" not in line
    assert line == (
        "patchcore/grid: image AUROC 0.988, fit 12.3 s, worker w1@tcp://10.0.0.7:40001, device cpu"
    )
    result.cached_from = "run-0"
    assert cell_summary(result).endswith(", device cpu (cached from run run-0)")
