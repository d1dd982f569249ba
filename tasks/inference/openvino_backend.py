"""The OpenVINO inference paths: `openvino-fp32`, `openvino-bf16` and `openvino-int8`.

One OpenVINO IR of the model's graph (in its exported form, `Deployment`), converted
once per (model, category), compiled with `INFERENCE_PRECISION_HINT` f32 or bf16 and
`PERFORMANCE_HINT` LATENCY. The IR takes the decoded uint8 image (NHWC) and converts it
to float inside the graph. `openvino-int8` is that IR quantised by NNCF post-training
quantisation, calibrated on training images and anomalous validation images only
(synthetic anomalies painted on held-out training images), never on test images.

Example:
    >>> ov_model = openvino_model(model, 256)                 # fp32 IR
    >>> int8 = quantize_int8(ov_model, load_images(train[:8], 256))
    >>> compiled = compile_openvino(with_uint8_input(int8), "int8", threads=2)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from torch import nn

from tasks.data.decode import decode, load_images
from tasks.inference.deployment import AS_TRAINED, Deployment
from tasks.inference.graph import model_graph
from tasks.inference.path_types import BuiltPath, PathContext, PathUnsupported


def openvino_model(
    model: AnomalibModule | nn.Module,
    image_size: int,
    calibration_images: torch.Tensor | None = None,
    deployment: Deployment = AS_TRAINED,
):
    """The model as an OpenVINO `ov.Model` taking float images (N, 3, S, S) in [0, 1];
    quantised to int8 with NNCF when `calibration_images` are given (training images, best
    with some anomalous validation images: see `_openvino_path`).

    Anomalies are activations beyond what calibration images show, and int8 clips
    activations to their calibrated range. So the ranges are the calibration images'
    overall min and max (NNCF's MINMAX, not its default mean of per-image extremes),
    widened `ACTIVATION_RANGE_MARGIN` times: with NNCF's defaults int8 clipped the scores
    of anomalous images far below fp32's (docs/performance.md, int8 calibration).
    `deployment` is the model's exported form (`tasks.inference.graph.Deployment`)."""
    import openvino as ov

    example = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad():
        # traced here without the trace check (a second and third forward pass that
        # OpenVINO's own tracing runs): the same IR, sooner
        traced = torch.jit.trace(model_graph(model, deployment), example, check_trace=False)
        ov_model = ov.convert_model(traced, input=[(-1, 3, image_size, image_size)])
    if calibration_images is not None:
        ov_model = quantize_int8(ov_model, calibration_images, deployment)
    return ov_model


def quantize_int8(ov_model, calibration_images: torch.Tensor, deployment: Deployment = AS_TRAINED):
    """An int8 copy of `ov_model` (a model's fp32 IR, as `openvino_model` makes it with
    `deployment`), quantised by NNCF on `calibration_images`; `ov_model` itself is left
    as it was."""
    if len(calibration_images) == 0:
        raise ValueError("int8 quantisation needs at least one calibration (training) image")
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.WARNING)  # not one INFO line per op it leaves in fp32
    calibration = nncf.Dataset([image[None].numpy() for image in calibration_images])
    quantized = nncf.quantize(
        ov_model.clone(),
        calibration,
        subset_size=len(calibration_images),
        fast_bias_correction=True,
        ignored_scope=int8_fp32_scope(deployment),
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )
    widen_activation_ranges(quantized, ACTIVATION_RANGE_MARGIN)
    return quantized


# Calibrated ranges are widened so that anomalies, activations beyond what calibration
# showed, are not clipped; a wider range means coarser int8 steps, so too wide costs
# accuracy too. 2 gave the smallest largest error over the models tried
# (docs/performance.md, int8 calibration; `benchmarks/int8_calibration.py`).
ACTIVATION_RANGE_MARGIN = 2.0


def widen_activation_ranges(ov_model, factor: float) -> None:
    """Scale the range of every FakeQuantize by `factor`. NNCF stores quantised weights as
    int8 constants, without a FakeQuantize, so every FakeQuantize is an activation's."""
    from openvino import opset13

    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        for i in range(1, 5):  # input low/high, output low/high
            bound = op.input_value(i).get_node().get_data() * factor
            op.input(i).replace_source_output(opset13.constant(bound.astype(np.float32)).output(0))


def int8_fp32_scope(deployment: Deployment = AS_TRAINED):
    """What int8 quantisation leaves in fp32: with `deployment.int8_fp32_top_level`, the
    ops of the model's own forward (the arithmetic between its sub-networks), else
    nothing: the whole graph is quantised."""
    if not deployment.int8_fp32_top_level:
        return None
    import nncf

    # ops of the top-level module itself (ScoreAndMap.model), not of its sub-networks
    return nncf.IgnoredScope(patterns=[r"__module\.model/aten::.*"], validate=False)


def with_uint8_input(ov_model):
    """The same model taking decoded uint8 images (N, H, W, 3): conversion runs in-graph."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(ov_model.clone())  # build() changes the model it was given
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    return ppp.build()


def compile_openvino(ov_model, precision: str, threads: int | None, latency: bool = True):
    """Compile for CPU with a precision hint ('fp32' or 'bf16'; int8 models carry theirs)."""
    import openvino as ov

    config: dict = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if latency:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(ov_model, "CPU", config)


def openvino_scorer(
    model: AnomalibModule | nn.Module,
    precision: str,
    image_size: int,
    calibration_images: torch.Tensor | None = None,
    threads: int | None = None,
    deployment: Deployment = AS_TRAINED,
) -> Callable[[torch.Tensor], InferenceBatch]:
    """Float images (N, 3, S, S) in [0, 1] -> raw scores and maps from the model's IR,
    compiled for `precision` "openvino-fp32", "openvino-bf16" or "openvino-int8" (then
    quantised on `calibration_images`, training images: no labels needed)."""
    if precision == "openvino-int8" and (calibration_images is None or not len(calibration_images)):
        raise ValueError("openvino-int8 needs calibration_images (a few training images)")
    calibration = calibration_images if precision == "openvino-int8" else None
    ov_model = openvino_model(model, image_size, calibration, deployment)
    compiled = compile_openvino(ov_model, precision.removeprefix("openvino-"), threads, False)
    request = compiled.create_infer_request()

    def score(images: torch.Tensor) -> InferenceBatch:
        outputs = request.infer({0: images.numpy()})
        pred_score, anomaly_map = (torch.from_numpy(outputs[i]) for i in range(2))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    return score


def _fp32_ir(ctx: PathContext):
    if "ir_fp32" not in ctx.cache:
        import openvino as ov

        ov_model = openvino_model(ctx.model, ctx.image_size, deployment=ctx.deployment)
        xml = ctx.out_dir / "openvino_fp32" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        ctx.cache["ir_fp32"] = (ov_model, str(xml))
    return ctx.cache["ir_fp32"]


def openvino_bf16_support() -> str | None:
    """None when OpenVINO's CPU plugin computes bf16 here, else why not: without it, a
    bf16 hint silently runs f32."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return None
    return f"OpenVINO's CPU plugin has no bf16 here (capabilities {', '.join(capabilities)})"


def openvino_path(ctx: PathContext, precision: str) -> BuiltPath:
    import openvino as ov

    if precision == "bf16" and (reason := openvino_bf16_support()):
        raise PathUnsupported(reason)
    artifacts: dict[str, str] = {}
    ov_model, artifacts["openvino_ir"] = _fp32_ir(ctx)  # converted once, for every precision
    calibration: list[str] = []
    if precision == "int8":
        # training images, then anomalous validation images (made from held-out training
        # images): int8 ranges must cover what anomalies do to the activations too
        calibration = [str(p) for p in ctx.train_paths[: ctx.settings.calibration_images]]
        if not calibration:
            raise ValueError("openvino-int8 needs training images for calibration; none given")
        calibration += [str(p) for p in ctx.anomaly_paths[: ctx.settings.calibration_anomalies]]
        images = load_images([Path(p) for p in calibration], ctx.image_size)
        ov_model = quantize_int8(ov_model, images, ctx.deployment)
        xml = ctx.out_dir / "openvino_int8" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        artifacts["openvino_int8_ir"] = str(xml)
    compiled = compile_openvino(with_uint8_input(ov_model), precision, ctx.threads)
    request = compiled.create_infer_request()
    size = ctx.image_size

    def score_files(paths: Sequence[Path]) -> np.ndarray:
        batch = np.stack([decode(p, size) for p in paths])
        return np.asarray(request.infer({0: batch})[0]).reshape(-1).copy()

    return BuiltPath(
        f"openvino-{precision}",
        precision,
        score_files,
        "cpu",
        ctx.threads,
        artifacts=artifacts,
        calibration_paths=calibration,
    )
