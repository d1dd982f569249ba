"""Every inference path of a real (tiny) PatchCore: timed, scored, stored; failures kept.

The model is anomalib's PatchCore with the offline backbone, fitted at 64 px on a few
noise textures, so each path builds in seconds. Timing goals live in
benchmarks/inference_paths.py, not here: these tests check what is measured and stored.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_mvtec_layout, fit_patchcore
from PIL import Image

import tasks.runtime.profiles as profiles
from tasks.data.decode import load_images
from tasks.inference.measure import measure_inference_paths
from tasks.inference.openvino_backend import (
    openvino_bf16_support,
    openvino_model,
    quantize_int8,
    widen_activation_ranges,
)
from tasks.inference.path_types import BuiltPath
from tasks.inference.paths import PATHS
from tasks.inference.timing import time_path
from tasks.models.efficientad.entry import EFFICIENTAD
from tasks.results.store.result_store import ResultStore
from tasks.results.types import LatencyResult, ModelResult, deployable
from tasks.runtime.hardware import cpu_has_bf16, cpu_name, device_name
from tasks.runtime.profiles import InferenceSettings

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    """A fitted PatchCore and its category's train and test images."""
    root = build_mvtec_layout(
        tmp_path_factory.mktemp("inference") / "data", n_train=6, n_test_good=3
    )
    model = fit_patchcore(root, SIZE, tmp_path_factory.mktemp("engine"))
    category = root / "widget"
    test = sorted((category / "test").rglob("*.png"))
    labels = [int(p.parent.name != "good") for p in test]
    train = sorted((category / "train" / "good").glob("*.png"))
    return model, test, labels, train, category


def _store_rows(tmp_path: Path, rows: list[LatencyResult]):
    store = ResultStore(tmp_path / "results.duckdb")
    store.start_run(
        "r1",
        flow_run_id=None,
        dataset="folder",
        data_root="x",
        categories=["widget"],
        models=["patchcore"],
        profile="quick",
    )
    result = ModelResult(
        model="patchcore",
        category="widget",
        profile="quick",
        settings={},
        weights={"source": "fallback"},
        device="cpu",
        metrics={"image_auroc": 1.0},
        latency=rows,
    )
    store.write_result("r1", result)
    return store.query("SELECT * FROM latency ORDER BY idx")


@pytest.mark.slow
def test_every_path_is_timed_scored_and_stored(fitted, tmp_path):
    model, test, labels, train, category = fitted
    # no time cap: every path must reach its 50 timed runs, however loaded the cores are
    settings = InferenceSettings(timed_runs=50, max_seconds_per_path=3600, throughput_batch=2)
    measured = measure_inference_paths(
        model,
        test,
        labels,
        train,
        image_size=SIZE,
        out_dir=tmp_path / "inference",
        settings=settings,
    )
    rows = {r.path: r for r in measured.latency}
    assert list(rows) == list(PATHS)
    unsupported = {"torch-fp16-graph"}
    unsupported |= set() if cpu_has_bf16() else {"torch-bf16"}
    unsupported |= set() if openvino_bf16_support() is None else {"openvino-bf16"}
    expected_ok = set(PATHS) - unsupported
    for name in expected_ok:
        row = rows[name]
        assert row.status == "ok", (name, row.error)
        assert 0 < row.p50_ms <= row.p95_ms, name
        assert row.timed_runs >= 50 and row.warmup_runs >= 1, name
        assert row.throughput_ips > 0 and row.image_auroc is not None, name
        assert row.auroc_delta == pytest.approx(row.image_auroc - rows["torch-fp32"].image_auroc)
    assert rows["torch-fp32"].auroc_delta == 0
    if not cpu_has_bf16():
        assert rows["torch-bf16"].status == "skipped" and "BF16" in rows["torch-bf16"].error
    if openvino_bf16_support() is not None:  # a bf16 hint would run f32 under a bf16 label
        ov_bf16 = rows["openvino-bf16"]
        assert ov_bf16.status == "skipped" and "no bf16" in ov_bf16.error
        assert ov_bf16.p50_ms is None
    graph = rows["torch-fp16-graph"]  # CUDA graphs: GPUs only (tests/test_gpu_paths.py)
    assert graph.status == "skipped" and "CUDA" in graph.error and graph.p50_ms is None
    # int8 is calibrated on training images only
    calibration = [Path(p) for p in rows["openvino-int8"].calibration_paths]
    assert calibration and all(p.parent == category / "train" / "good" for p in calibration)
    assert not set(calibration) & set(test)
    for kind in ("openvino_ir", "openvino_int8_ir", "onnx", "anomalib_openvino_ir"):
        assert Path(measured.artifacts[kind]).is_file(), kind

    stored = _store_rows(tmp_path, measured.latency)
    assert list(stored["path"]) == list(PATHS)
    assert set(stored["status"]) <= {"ok", "skipped"}
    int8 = stored[stored["path"] == "openvino-int8"].iloc[0]
    assert int8["precision"] == "int8" and int8["timed_runs"] >= 50
    assert list(int8["calibration_paths"]) == rows["openvino-int8"].calibration_paths
    fp32 = stored[stored["path"] == "torch-fp32"].iloc[0]
    assert fp32["image_auroc"] == pytest.approx(rows["torch-fp32"].image_auroc)
    # every row, skipped ones too, names the CPU it was measured on
    assert set(stored["hardware"]) == {device_name("cpu")}
    assert device_name("cpu").startswith(cpu_name())


def test_a_failing_path_is_stored_as_failed_with_its_error(fitted, tmp_path):
    model, test, labels, _, _ = fitted
    settings = InferenceSettings(
        paths=("torch-fp32", "openvino-int8"), timed_runs=5, warmup_runs=1, throughput_batch=1
    )
    # no training images: int8 has nothing it may calibrate on, and must not take test images
    measured = measure_inference_paths(
        model, test, labels, [], image_size=SIZE, out_dir=tmp_path / "inf", settings=settings
    )
    fp32, int8 = measured.latency
    assert fp32.status == "ok" and fp32.timed_runs >= 5 and fp32.image_auroc is not None
    assert int8.status == "failed" and "training images" in int8.error
    assert int8.p50_ms is None and int8.image_auroc is None

    stored = _store_rows(tmp_path, measured.latency)
    failed = stored[stored["path"] == "openvino-int8"].iloc[0]
    assert failed["status"] == "failed" and "training images" in failed["error"]
    assert failed["p50_ms"] is None or failed["p50_ms"] != failed["p50_ms"]  # NULL


def test_anomalibs_openvino_cache_goes_under_the_cells_folder_not_the_current_one(
    fitted, tmp_path, monkeypatch
):
    """anomalib's OpenVINOInferencer keeps its compile cache in ./openvino_cache, wherever
    the run was started; here it lands under the cell's inference folder."""
    model, test, labels, train, _ = fitted
    cwd = tmp_path / "started_here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = InferenceSettings(
        paths=("torch-fp32", "anomalib-openvino"), timed_runs=2, min_timed_runs=1, warmup_runs=1
    )
    out = tmp_path / "cell" / "inference"
    measured = measure_inference_paths(
        model, test, labels, train, image_size=SIZE, out_dir=out, settings=settings
    )
    row = {r.path: r for r in measured.latency}["anomalib-openvino"]
    assert row.status == "ok", row.error
    assert list(cwd.iterdir()) == []  # nothing written where the run was started
    cache = out / "anomalib" / "openvino_cache"
    assert cache.is_dir() and any(p.is_file() for p in cache.rglob("*")), "no compile cache"


def test_calibration_images_from_the_test_split_are_refused(fitted, tmp_path):
    model, test, labels, train, _ = fitted
    with pytest.raises(ValueError, match="must not be test images"):
        measure_inference_paths(
            model,
            test,
            labels,
            [*train, test[0]],
            image_size=SIZE,
            out_dir=tmp_path,
            settings=InferenceSettings(paths=("torch-fp32",)),
        )


def test_int8_calibrates_on_training_images_then_validation_anomalies(fitted, tmp_path):
    model, test, labels, train, _ = fitted
    anomalies = []
    for i, source in enumerate(train[:3]):  # stand-ins for painted validation images
        image = np.array(Image.open(source).convert("RGB"))
        image[8:24, 8:24] = 255
        anomalies.append(tmp_path / f"painted_{i}.png")
        Image.fromarray(image).save(anomalies[-1])
    settings = InferenceSettings(
        paths=("torch-fp32", "openvino-int8"),
        timed_runs=2,
        warmup_runs=1,
        throughput_batch=1,
        calibration_images=2,
        calibration_anomalies=2,
    )
    measured = measure_inference_paths(
        model,
        test,
        labels,
        train,
        image_size=SIZE,
        out_dir=tmp_path / "inf",
        settings=settings,
        anomaly_paths=anomalies,
    )
    int8 = measured.latency[1]
    assert int8.status == "ok", int8.error
    assert int8.calibration_paths == [str(p) for p in [*train[:2], *anomalies[:2]]]
    # int8 quantises the model's fp32 IR, which is kept as an artifact too
    assert Path(measured.artifacts["openvino_ir"]).is_file()
    assert Path(measured.artifacts["openvino_int8_ir"]).is_file()

    with pytest.raises(ValueError, match="must not be test images"):
        measure_inference_paths(
            model,
            test,
            labels,
            train,
            image_size=SIZE,
            out_dir=tmp_path,
            settings=settings,
            anomaly_paths=[test[-1]],
        )


def _quantisation(ov_model) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """FakeQuantize name -> [input low, high, output low, high]; and the int8 weights."""
    ops = ov_model.get_ordered_ops()
    bounds = {
        op.get_friendly_name(): [np.array(op.input_value(i).node.get_data()) for i in range(1, 5)]
        for op in ops
        if op.get_type_name() == "FakeQuantize"
    }
    int8 = ("i8", "u8")
    weights = [
        op.get_data().copy()
        for op in ops
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in int8
    ]
    return bounds, weights


def test_int8_quantises_a_copy_and_leaves_the_fp32_ir_as_it_was(fitted):
    # the openvino-fp32 path compiles the same converted IR that int8 quantises
    model, _, _, train, _ = fitted
    fp32 = openvino_model(model, SIZE)
    int8 = quantize_int8(fp32, load_images(train[:2], SIZE))
    assert _quantisation(int8)[0] and _quantisation(int8)[1]
    assert _quantisation(fp32) == ({}, [])


def test_int8_activation_ranges_are_widened_and_weights_kept(fitted):
    import nncf

    model, _, _, train, _ = fitted
    images = load_images(train[:2], SIZE)
    quantized = nncf.quantize(
        openvino_model(model, SIZE), nncf.Dataset([im[None].numpy() for im in images])
    )
    bounds, weights = _quantisation(quantized)

    widen_activation_ranges(quantized, 2.0)

    widened, kept = _quantisation(quantized)
    assert bounds and weights  # activations and weights are quantised
    assert widened.keys() == bounds.keys()
    for name, values in bounds.items():
        for old, new in zip(values, widened[name], strict=True):
            np.testing.assert_allclose(new, 2 * old, err_msg=name)
    assert len(kept) == len(weights)
    assert all(np.array_equal(a, b) for a, b in zip(kept, weights, strict=True))


def _row(path: str, p50: float | None, delta: float | None, status: str = "ok"):
    return LatencyResult(
        p50_ms=p50,
        p95_ms=p50,
        throughput_ips=None if p50 is None else 1000 / p50,
        batch_size=1,
        device="cpu",
        threads=2,
        peak_memory_mb=None,
        precision="fp32",
        path=path,
        auroc_delta=delta,
        status=status,
    )


def test_deployable_is_the_fastest_path_within_the_auroc_tolerance():
    rows = [
        _row("torch-fp32", 100.0, 0.0),
        _row("openvino-bf16", 30.0, -0.004),
        _row("openvino-int8", 20.0, -0.02),  # faster, but loses accuracy
        _row("anomalib-openvino", 10.0, 0.0),  # anomalib's paths are the comparison
        _row("torch-bf16", None, None, status="failed"),
    ]
    assert deployable(rows).path == "openvino-bf16"
    assert deployable([_row("openvino-int8", 20.0, -0.02)]) is None


def test_report_shows_paths_the_deployable_one_and_a_speed_auroc_chart(tmp_path):
    from tasks.report.render import render_report

    rows = [
        _row("torch-fp32", 100.0, 0.0),
        _row("openvino-bf16", 25.0, -0.003),
        _row("openvino-int8", 20.0, -0.05),
        _row("torch-bf16", None, None, status="failed"),
        _row("anomalib-torch", 110.0, 0.0),
        _row("anomalib-openvino", 50.0, 0.0),
    ]
    for r in rows:
        r.image_auroc = None if r.auroc_delta is None else 0.9 + r.auroc_delta
        r.hardware = "Example CPU 9000, 2 cpus, AVX2"
    rows[3].error = "RuntimeError: boom"
    _store_rows(tmp_path, rows)
    html = render_report(tmp_path / "results.duckdb", "r1", tmp_path / "reports").read_text()
    section = html[html.index('id="inference-paths"') :]
    assert 'class="deployable" data-path="openvino-bf16"' in section
    assert '<svg id="speed-auroc-widget"' in html  # one chart per category, every model
    assert "RuntimeError: boom" in section and 'data-status="failed"' in section
    assert "measured on Example CPU 9000, 2 cpus, AVX2" in section
    # openvino-bf16 is 4.4x anomalib-torch (110/25) and 2x anomalib-openvino (50/25)
    bf16_row = section[section.index('data-path="openvino-bf16" data-status') :]
    bf16_row = bf16_row[: bf16_row.index("</tr>")]
    assert "4.40×" in bf16_row and "2.00×" in bf16_row
    assert "<script" not in html


def test_int8_efficientad_keeps_the_distance_between_its_networks_in_fp32():
    # EfficientAD's anomalies are small teacher-student differences: the networks are
    # quantised, the arithmetic between them (distances, normalisation, merge) is not.
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384, model_size="small").eval()
    for value in model.mean_std.values():
        value.data.uniform_(0.5, 1.5)
    for value in model.quantiles.values():
        value.data.uniform_(0.1, 1.0)
    ov_model = openvino_model(
        model, 256, calibration_images=torch.rand(2, 3, 256, 256), deployment=EFFICIENTAD.deployment
    )
    quantised = set()
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            for target in op.output(0).get_target_inputs():
                quantised.add(target.get_node().get_friendly_name())
    networks = {name.split("/")[0] for name in quantised}
    exported = {
        "__module.model.teacher.conv4",
        "__module.model.student_st",
        "__module.model.student_ae",
    }
    assert exported <= networks
    assert not [name for name in quantised if name.startswith("__module.model/")]


@pytest.mark.parametrize(("pad_maps", "trained"), [(True, True), (False, True), (True, False)])
def test_exported_efficientad_computes_anomalibs_scores_and_maps(pad_maps, trained):
    # the OpenVINO paths export EfficientAD-S in a cheaper form: the same numbers, whether
    # or not its statistics are set, with and without padded maps; in torch and in the IR
    import openvino as ov
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

    from tasks.models.efficientad.deploy import DeployedEfficientAd

    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384, model_size="small", pad_maps=pad_maps)
    model.eval()
    if trained:
        for value in model.mean_std.values():
            value.data.uniform_(0.5, 1.5)
        model.quantiles["qa_st"].data.fill_(0.2)
        model.quantiles["qb_st"].data.fill_(0.9)
        model.quantiles["qa_ae"].data.fill_(0.1)
        model.quantiles["qb_ae"].data.fill_(0.5)
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        expected = model(images)
        deployed = DeployedEfficientAd(model).eval()(images)
    peak = expected.anomaly_map.abs().max()
    assert deployed.anomaly_map.shape == expected.anomaly_map.shape == (2, 1, 256, 256)
    assert torch.allclose(deployed.anomaly_map, expected.anomaly_map, atol=1e-5 * peak)
    assert torch.allclose(
        deployed.pred_score.reshape(-1), expected.pred_score.reshape(-1), atol=1e-5 * peak
    )
    compiled = ov.Core().compile_model(
        openvino_model(model, 256, deployment=EFFICIENTAD.deployment),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32"},
    )
    score, anomaly_map = compiled(images.numpy()).values()
    assert np.allclose(anomaly_map, expected.anomaly_map.numpy(), atol=1e-4 * float(peak))
    assert np.allclose(
        score.reshape(-1), expected.pred_score.reshape(-1).numpy(), atol=1e-4 * float(peak)
    )


def test_anomalib_paths_have_their_own_time_cap():
    # anomalib's paths are the comparison: capped sooner; this project's paths still
    # score the whole test split and get their timed runs
    def slow(paths):
        time.sleep(0.05)
        return np.zeros(len(paths))

    settings = InferenceSettings(
        timed_runs=20,
        min_timed_runs=2,
        max_seconds_per_path=10,
        anomalib_max_seconds=0.2,
        warmup_runs=1,
        throughput_batch=1,
    )
    test = [Path(f"{i}.png") for i in range(8)]
    ours = time_path(BuiltPath("torch-fp32", "fp32", slow, "cpu", 1), test, settings, True)
    theirs = time_path(BuiltPath("anomalib-torch", "fp32", slow, "cpu", 1, False), test, settings)
    assert len(ours.single_ms) == 20 and ours.scores is not None
    assert 2 <= len(theirs.single_ms) < len(test) and theirs.scores is None


QUICK_PATHS = (
    "torch-fp32",
    "openvino-fp32",
    "openvino-int8",
    "anomalib-torch",
    "anomalib-openvino",
)


@pytest.mark.parametrize("flags", ["avx512f avx512_vnni amx_int8 amx_bf16", "avx2 fma"])
def test_the_quick_profile_names_the_same_paths_on_every_cpu(tmp_path, flags) -> None:
    # A profile says what it means: the same paths wherever it is loaded. Without int8
    # dot products (VNNI, AMX) OpenVINO fp32 can be faster than int8, so both are timed
    # on every CPU; what a CPU cannot run is skipped at run time, with the reason. Each
    # CPU is a fresh process: the profile must not be fixed by the CPU it was imported on.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"model name\t: Example CPU\nflags\t\t: {flags}\n")
    code = (
        "import pathlib, tasks.runtime.hardware as hardware; "
        f"hardware.CPUINFO = pathlib.Path({str(cpuinfo)!r}); "
        "from tasks.runtime.profiles import load_profile; "
        "print(','.join(load_profile('quick').inference.paths))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert tuple(out.stdout.strip().split(",")) == QUICK_PATHS
    assert profiles.InferenceSettings(paths=QUICK_PATHS).paths == QUICK_PATHS  # valid names
