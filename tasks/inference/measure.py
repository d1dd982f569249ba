"""Every deployable inference path of a trained model, timed and scored, beside anomalib's own.

A user deploying PatchCore or EfficientAD on a CPU can run the trained model in several
ways; this module builds each one, scores the complete test split with it and times it
the way a deployment runs: image file on disk -> decode -> resize -> model -> score.

Paths (`PATHS`):

- `torch-fp32`: the anomalib torch module (pre-processor + model), channels-last;
- `torch-bf16`: the same under autocast, where the device computes bf16 natively
  (AVX-512 BF16 or AMX on CPU, `is_bf16_supported` on CUDA);
- `openvino-fp32`, `openvino-bf16`: one OpenVINO IR of the same graph, compiled with
  `INFERENCE_PRECISION_HINT` f32 or bf16 and `PERFORMANCE_HINT` LATENCY. The IR takes
  the decoded uint8 image (NHWC) and converts it to float inside the graph;
- `openvino-int8`: that IR quantised by NNCF post-training quantisation, calibrated on
  training images only (`train/good`), never on test images;
- `anomalib-torch`: anomalib's own default path, `anomalib.deploy.TorchInferencer` on
  anomalib's torch export (`Engine.export(..., ExportType.TORCH)`);
- `anomalib-openvino`: anomalib's own OpenVINO export (`AnomalibModule.to_openvino`,
  through ONNX) run by `anomalib.deploy.OpenVINOInferencer`.

Each path gives one `LatencyResult`: batch-1 p50/p95 over `timed_runs` runs after
warm-up (the pass over the test split is itself timed image by image, so it doubles as
timed runs), throughput at a stated batch, the image AUROC of that path's scores on the
full test split and its difference from `torch-fp32`. A path that fails is returned as a
failed row carrying its error; a path the hardware cannot run is returned as skipped,
with the reason. OpenVINO IRs and the ONNX file are written under `out_dir`.

Example:
    >>> paths = measure_inference_paths(model, test_paths, test_labels, train_paths,
    ...                                 image_size=256, out_dir=run_dir / "inference",
    ...                                 settings=profile.inference)
    >>> [(r.path, r.p50_ms, r.auroc_delta) for r in paths.latency]  # doctest: +SKIP
    >>> deployable(paths.latency).path  # doctest: +SKIP
    'openvino-bf16'
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pyspng
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from anomalib.models.image.efficient_ad.torch_model import (
    EfficientAdModel,
    SmallPatchDescriptionNetwork,
    imagenet_norm_batch,
)
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from tasks.data.resize import resize_image
from tasks.results.types import AUROC_TOLERANCE, LatencyResult, deployable
from tasks.runtime.hardware import cpu_has_bf16, device_name
from tasks.runtime.profiles import ALL_INFERENCE_PATHS, InferenceSettings

logger = logging.getLogger(__name__)

__all__ = [
    "AUROC_TOLERANCE",
    "PATHS",
    "InferencePaths",
    "deployable",
    "efficientad_inference",
    "load_images",
    "measure_inference_paths",
]

PATHS = ALL_INFERENCE_PATHS  # one list, kept by the settings that name them
REFERENCE_PATH = "torch-fp32"

# Kept for the EfficientAD benchmark script and its tests (raw torch module in, scores out).
Precision = Literal["fp32", "bf16", "openvino-fp32", "openvino-bf16", "openvino-int8"]


# --------------------------------------------------------------------------- decoding


def decode(path: Path, image_size: int) -> np.ndarray:
    """Image file -> RGB uint8 (image_size, image_size, 3), resized as the models are."""
    return resize_image(read_rgb(path), image_size)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREYSCALE = 0  # IHDR colour type


def read_rgb(path: Path) -> np.ndarray:
    """Image file -> RGB uint8 (H, W, 3), the pixels anomalib's training reader sees.

    Colour PNGs (MVTec AD's leather, tile and most of its categories) go through libspng
    (`pyspng`): on the 2-core Xeon it decodes a 1024 px colour PNG of the real leather
    subset in about 20 ms, where OpenCV's libpng takes 30. Greyscale PNGs (grid) and
    other formats go through OpenCV, which is the quicker on grey PNGs (13 ms against
    16). Asked for RGB, libspng drops transparency and keeps the high byte of 16-bit
    samples, as OpenCV does; for 8-bit files both give anomalib's reader's pixels."""
    data = path.read_bytes()
    if data.startswith(PNG_SIGNATURE):
        try:
            if pyspng.header(data)["color_type"] != PNG_GREYSCALE:
                return pyspng.load(data, "RGB")
        except RuntimeError as error:  # libspng's message names the broken part
            raise ValueError(f"{path}: not a readable PNG file ({error})") from error
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError(f"{path}: not a readable image file")
    return image


def _to_float(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float (N, 3, H, W) in [0, 1]."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def load_images(paths: list[Path], image_size: int) -> torch.Tensor:
    """Decode and resize images as the models' pre-processors do: (N, 3, S, S) in [0, 1]."""
    return _to_float([decode(p, image_size) for p in paths])


# --------------------------------------------------------------------------- graphs


class ScoreAndMap(nn.Module):
    """An anomalib model as plain tensors: images in [0, 1] -> (score (N,), map (N,1,H,W)).

    `pre_process` is the anomalib pre-processor's transform (normalise, crop) when the
    model has one; post-processing (score normalisation) is left out: it is monotone,
    so the image AUROC does not depend on it."""

    def __init__(self, model: nn.Module, pre_process: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.pre_process = pre_process

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre_process is not None:
            images = self.pre_process(images)
        result = self.model(images)
        return result.pred_score.reshape(-1), result.anomaly_map


def _graph(model: AnomalibModule | nn.Module, deploy: bool = False) -> ScoreAndMap:
    """The torch computation of an anomalib module (or of a bare torch model), in eval mode;
    with `deploy`, EfficientAD-S in its exported form (`DeployedEfficientAd`)."""
    inner = model.model if isinstance(model, AnomalibModule) else model
    if deploy and DeployedEfficientAd.supports(inner):
        inner = DeployedEfficientAd(inner)
    if isinstance(model, AnomalibModule):
        pre = model.pre_processor
        transform = getattr(pre, "transform", None) if pre is not None else None
        return ScoreAndMap(inner, transform).eval()
    return ScoreAndMap(inner).eval()


def _conv_part(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """Output channels [start, stop) of `conv`, as a conv of their own."""
    part = nn.Conv2d(conv.in_channels, stop - start, conv.kernel_size, conv.stride, conv.padding)
    part.weight.data = conv.weight.data[start:stop].clone()
    part.bias.data = conv.bias.data[start:stop].clone()
    return part


class DeployedEfficientAd(nn.Module):
    """anomalib's EfficientAD-S inference, the same weights and numbers (to float rounding), in
    the form the OpenVINO paths export: 3.5-5 ms less per image in int8 on 2 cores.

    - The student's last convolution is split into its teacher half and its autoencoder
      half, so the graph does not copy a (768, 56, 56) output apart.
    - The quantile normalisation, fixed after training, is folded into constants and
      both maps are merged at 56 x 56 before the one upsampling to the image size
      (bilinear upsampling and zero padding commute with the affine merge; the padding
      takes the merged value of a zero distance). anomalib upsamples and normalises
      each map at full size, behind tensor `where`s that the graph evaluates per image.

    The torch paths keep anomalib's own forward: they are the reference whose AUROC the
    exported paths are held to."""

    def __init__(self, model: EfficientAdModel) -> None:
        super().__init__()
        channels = model.teacher_out_channels
        student = model.student
        self.teacher = model.teacher
        self.student_body = nn.Sequential(
            student.conv1, nn.ReLU(), student.avgpool1,
            student.conv2, nn.ReLU(), student.avgpool2,
            student.conv3, nn.ReLU(),
        )  # fmt: skip
        self.student_st = _conv_part(student.conv4, 0, channels)
        self.student_ae = _conv_part(student.conv4, channels, 2 * channels)
        self.ae = model.ae
        self.pad_maps = model.pad_maps
        mean, std = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
        if model.is_set(model.mean_std):
            mean, std = model.mean_std["mean"].detach(), model.mean_std["std"].detach()
        self.register_buffer("teacher_mean", mean.clone())
        self.register_buffer("teacher_std", std.clone())
        scale_st = scale_ae = 1.0
        offset = 0.0
        if model.is_set(model.quantiles):
            q = {key: float(value.detach()) for key, value in model.quantiles.items()}
            scale_st = 0.1 / (q["qb_st"] - q["qa_st"])
            scale_ae = 0.1 / (q["qb_ae"] - q["qa_ae"])
            offset = -q["qa_st"] * scale_st - q["qa_ae"] * scale_ae
        # anomaly map = 0.5 * normalised map_st + 0.5 * normalised map_stae
        self.scale_st, self.scale_ae, self.offset = 0.5 * scale_st, 0.5 * scale_ae, 0.5 * offset

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """EfficientAD-S (the small networks); other models keep their own forward."""
        return isinstance(model, EfficientAdModel) and isinstance(
            model.student, SmallPatchDescriptionNetwork
        )

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        image_size = images.shape[-2:]
        teacher = (self.teacher(images) - self.teacher_mean) / self.teacher_std
        body = self.student_body(imagenet_norm_batch(images))
        reconstruction = self.ae(images, image_size)
        map_st = torch.mean((teacher - self.student_st(body)) ** 2, dim=1, keepdim=True)
        map_ae = torch.mean((reconstruction - self.student_ae(body)) ** 2, dim=1, keepdim=True)
        merged = self.scale_st * map_st + self.scale_ae * map_ae + self.offset
        if self.pad_maps:
            merged = F.pad(merged, (4, 4, 4, 4), value=self.offset)
        anomaly_map = F.interpolate(merged, size=image_size, mode="bilinear")
        return InferenceBatch(
            pred_score=torch.amax(anomaly_map, dim=(-2, -1)), anomaly_map=anomaly_map
        )


def bf16_support(device: str) -> str | None:
    """None when `device` runs bf16 natively, else why not."""
    if device.startswith("cuda"):
        return None if torch.cuda.is_bf16_supported() else "this CUDA device has no bf16 support"
    return None if cpu_has_bf16() else "the CPU has neither AVX-512 BF16 nor AMX"


TORCH_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_scorer(
    model: AnomalibModule | nn.Module,
    precision: str = "fp32",
    device: str = "cpu",
    cuda_graph: bool = False,
) -> Callable[[torch.Tensor], InferenceBatch]:
    """Float images (N, 3, H, W) in [0, 1] -> raw scores and maps, in fp32 or under bf16
    or fp16 autocast (`precision`); with `cuda_graph`, replayed from CUDA graphs."""
    dtype = TORCH_DTYPES[precision]
    # channels-last lets oneDNN skip layout reorders: ~15% (fp32) to ~30% (bf16) less CPU
    graph = copy.deepcopy(_graph(model)).to(device).to(memory_format=torch.channels_last)
    device_type = device.split(":")[0]
    run: Callable = graph
    if cuda_graph:
        run = CudaGraphed(graph, dtype)

    def score(images: torch.Tensor) -> InferenceBatch:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(device_type, dtype or torch.bfloat16, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            pred_score, anomaly_map = run(images)
        return InferenceBatch(
            pred_score=pred_score.float().cpu().reshape(-1), anomaly_map=anomaly_map.float().cpu()
        )

    return score


class CudaGraphed:
    """`module` replayed from CUDA graphs, one captured per input shape.

    At batch 1 a GPU spends longer launching EfficientAD-S's kernels than running them:
    captured, anomalib's network took 0.74 ms on an H200 instead of 3.9 ms (README,
    "Benchmarks"). Replay runs the captured kernels on fixed buffers: the images are
    copied into the input buffer, and the outputs are copied out before the next replay."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None) -> None:
        self.module, self.dtype = module, dtype
        self.captured: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}

    def _autocast(self):
        # autocast's weight cache must stay off while capturing (torch's CUDA graph notes)
        dtype = self.dtype or torch.float16
        return torch.autocast("cuda", dtype, enabled=self.dtype is not None, cache_enabled=False)

    def _capture(self, images: torch.Tensor) -> tuple:
        static = images.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), self._autocast():
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph asks
                self.module(static)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), self._autocast(), torch.cuda.graph(cuda_graph):
            outputs = self.module(static)
        return cuda_graph, static, outputs

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(images.shape), images.stride(), images.dtype)
        if key not in self.captured:
            with torch.inference_mode(False):
                self.captured[key] = self._capture(images)
        cuda_graph, static, outputs = self.captured[key]
        static.copy_(images)
        cuda_graph.replay()
        return tuple(output.clone() for output in outputs)


def openvino_model(
    model: AnomalibModule | nn.Module,
    image_size: int,
    calibration_images: torch.Tensor | None = None,
):
    """The model as an OpenVINO `ov.Model` taking float images (N, 3, S, S) in [0, 1];
    quantised to int8 with NNCF when `calibration_images` are given (training images, best
    with some anomalous validation images: see `_openvino_path`).

    Anomalies are activations beyond what calibration images show, and int8 clips
    activations to their calibrated range. So the ranges are the calibration images'
    overall min and max (NNCF's MINMAX, not its default mean of per-image extremes),
    widened `ACTIVATION_RANGE_MARGIN` times. With NNCF's defaults, int8 cut the score of
    the real leather subset's glue image from 3.65 to 0.83 (EfficientAD-S, quick profile),
    and demo_grass's stain images by up to 30 % of the score range."""
    import openvino as ov

    example = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad():
        # traced here without the trace check (a second and third forward pass that
        # OpenVINO's own tracing runs): the same IR, 1.6 s sooner for EfficientAD-S
        traced = torch.jit.trace(_graph(model, deploy=True), example, check_trace=False)
        ov_model = ov.convert_model(traced, input=[(-1, 3, image_size, image_size)])
    if calibration_images is not None:
        ov_model = quantize_int8(ov_model, model, calibration_images)
    return ov_model


def quantize_int8(ov_model, model: AnomalibModule | nn.Module, calibration_images: torch.Tensor):
    """An int8 copy of `ov_model` (the fp32 IR of `model`, as `openvino_model` makes it),
    quantised by NNCF on `calibration_images`; `ov_model` itself is left as it was."""
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
        ignored_scope=_int8_fp32_scope(model),
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )
    widen_activation_ranges(quantized, ACTIVATION_RANGE_MARGIN)
    return quantized


# Largest int8 score error, as a share of the fp32 scores' range, of five quick-profile
# models calibrated on 8 training images and 16 validation anomalies (EfficientAD-S on the
# real leather subset and on demo_grass, demo_grid, demo_gravel; PatchCore on the real grid
# subset): margin 1: 0.81, 0.060, 0.049, 0.012, 0.045; margin 2: 0.003, 0.024, 0.028,
# 0.012, 0.077; margin 3: 0.003, 0.029, 0.066, 0.018, 0.096 (coarser steps cost more).
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


def _int8_fp32_scope(model: AnomalibModule | nn.Module):
    """What int8 quantisation leaves in fp32: for EfficientAD the arithmetic between its
    networks (teacher-student and autoencoder distances, map normalisation, merge). Its
    anomalies are small teacher-student differences that 8-bit steps erase: quantised,
    demo_grid's test AUROC fell 0.104; with these ops in fp32, 0.010, at 70 ms instead of
    68 (`DeployedEfficientAd` keeps those ops at its top level too). PatchCore is
    quantised whole (its AUROC did not move; keeping its memory-bank search in fp32 broke
    it)."""
    import nncf

    inner = model.model if isinstance(model, AnomalibModule) else model
    if isinstance(inner, EfficientAdModel):
        # ops of the top-level module itself, not of teacher, student or autoencoder
        return nncf.IgnoredScope(patterns=[r"__module\.model/aten::.*"], validate=False)
    return None


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


def efficientad_inference(
    model: AnomalibModule | nn.Module,
    precision: Precision = "fp32",
    *,
    image_size: int = 256,
    calibration_images: torch.Tensor | None = None,
    threads: int | None = None,
) -> Callable[[torch.Tensor], InferenceBatch]:
    """A callable scoring a batch of images (N, 3, image_size, image_size) in [0, 1].

    Returns anomalib's InferenceBatch with raw `pred_score` (N,) and `anomaly_map`
    (N, 1, H, W), as the torch model gives them (before anomalib's post-processing).
    "bf16" runs the torch model under CPU autocast; "openvino-*" converts it with OpenVINO;
    "openvino-int8" quantises with NNCF on `calibration_images` (training images, no
    labels needed). `model` is the EfficientAd module or its torch model: the EfficientAD
    pre-processor only resizes, so the images go to the torch model as they are.
    """
    torch_model = getattr(model, "model", model)
    if precision in ("fp32", "bf16"):
        return torch_scorer(torch_model, precision)
    if not precision.startswith("openvino-"):
        msg = f"unknown precision {precision!r}: choose one of {Precision.__args__}"
        raise ValueError(msg)
    return _openvino_inference(torch_model, precision, image_size, calibration_images, threads)


def _openvino_inference(
    torch_model: nn.Module,
    precision: str,
    image_size: int,
    calibration_images: torch.Tensor | None,
    threads: int | None,
) -> Callable[[torch.Tensor], InferenceBatch]:
    if precision == "openvino-int8" and (calibration_images is None or not len(calibration_images)):
        raise ValueError("openvino-int8 needs calibration_images (a few training images)")
    ov_model = openvino_model(
        torch_model, image_size, calibration_images if precision == "openvino-int8" else None
    )
    compiled = compile_openvino(ov_model, precision.removeprefix("openvino-"), threads, False)
    request = compiled.create_infer_request()

    def score(images: torch.Tensor) -> InferenceBatch:
        outputs = request.infer({0: images.numpy()})
        pred_score, anomaly_map = (torch.from_numpy(outputs[i]) for i in range(2))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    return score


# --------------------------------------------------------------------------- paths


FileScorer = Callable[[Sequence[Path]], np.ndarray]


@dataclass
class BuiltPath:
    """A ready path: files -> raw scores, plus what it wrote and how it was made."""

    name: str
    precision: str
    score_files: FileScorer
    device: str
    threads: int
    batchable: bool = True  # anomalib's inferencers take one image at a time
    artifacts: dict[str, str] = field(default_factory=dict)
    calibration_paths: list[str] = field(default_factory=list)


@dataclass
class PathContext:
    """What every path builder may use; shared so expensive work (IR, ONNX) is done once."""

    model: AnomalibModule
    image_size: int
    train_paths: list[Path]
    out_dir: Path
    settings: InferenceSettings
    device: str
    threads: int
    torch_export: Path | None = None
    anomaly_paths: list[Path] = field(default_factory=list)  # validation anomalies
    cache: dict = field(default_factory=dict)


def _torch_path(ctx: PathContext, name: str) -> BuiltPath:
    """torch-fp32, torch-bf16 (autocast), or torch-fp16-graph (fp16 autocast replayed from
    CUDA graphs: how the EfficientAD paper times its models)."""
    precision, cuda_graph = PRECISIONS[name], name == "torch-fp16-graph"
    if cuda_graph and not ctx.device.startswith("cuda"):
        raise PathUnsupported("CUDA graphs need a CUDA device; this path runs on GPUs only")
    if precision == "bf16" and (reason := bf16_support(ctx.device)):
        raise PathUnsupported(reason)
    score = torch_scorer(ctx.model, precision, ctx.device, cuda_graph)
    size = ctx.image_size

    def score_files(paths: Sequence[Path]) -> np.ndarray:
        return score(_to_float([decode(p, size) for p in paths])).pred_score.numpy()

    return BuiltPath(name, precision, score_files, ctx.device, torch.get_num_threads())


def _fp32_ir(ctx: PathContext):
    if "ir_fp32" not in ctx.cache:
        import openvino as ov

        ov_model = openvino_model(ctx.model, ctx.image_size)
        xml = ctx.out_dir / "openvino_fp32" / "model.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, xml, compress_to_fp16=False)
        ctx.cache["ir_fp32"] = (ov_model, str(xml))
    return ctx.cache["ir_fp32"]


def openvino_bf16_support() -> str | None:
    """None when OpenVINO's CPU plugin computes bf16 here, else why not: without it, a
    bf16 hint silently runs f32 (seen on an AVX2-only AMD EPYC)."""
    import openvino as ov

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return None
    return f"OpenVINO's CPU plugin has no bf16 here (capabilities {', '.join(capabilities)})"


def _openvino_path(ctx: PathContext, precision: str) -> BuiltPath:
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
        images = _to_float([decode(Path(p), ctx.image_size) for p in calibration])
        ov_model = quantize_int8(ov_model, ctx.model, images)
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


@contextlib.contextmanager
def _trusted_pickles() -> Iterator[None]:
    """anomalib's TorchInferencer loads a pickle only with TRUST_REMOTE_CODE=1; the export
    was written by this run, so allow it for the load and restore the variable after."""
    before = os.environ.get("TRUST_REMOTE_CODE")
    os.environ["TRUST_REMOTE_CODE"] = "1"
    # it warns twice per load (legacy inferencer, pickle): known, and said in the docs
    chatty = logging.getLogger("anomalib.deploy.inferencers.torch_inferencer")
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        yield
    finally:
        chatty.setLevel(level)
        if before is None:
            os.environ.pop("TRUST_REMOTE_CODE", None)
        else:
            os.environ["TRUST_REMOTE_CODE"] = before


def anomalib_input(path: Path, image_size: int) -> np.ndarray:
    """What anomalib's inferencers are given: the file decoded and resized as for every
    other path (`decode`), as float32 in [0, 1], so all paths score the same pixels and
    differ only in how they run the model.

    Not the file itself: an exported anomalib model resizes with its pre-processor's
    export transform, which has no antialiasing (`PreProcessor.forward`), unlike training.
    Given full-size files, anomalib's own torch path scored PatchCore 0.818 instead of the
    trained model's 0.879 on the real grid subset."""
    return decode(path, image_size).astype(np.float32) / 255.0


def _anomalib_torch_path(ctx: PathContext) -> BuiltPath:
    from anomalib.deploy import TorchInferencer

    export = ctx.torch_export
    if export is None or not Path(export).is_file():
        export = ctx.model.to_torch(ctx.out_dir / "anomalib")
    with _trusted_pickles():
        inferencer = TorchInferencer(path=export, device=ctx.device)
    size = ctx.image_size

    def predict(path: Path) -> float:
        return float(inferencer.predict(anomalib_input(path, size)).pred_score)

    def score_files(paths: Sequence[Path]) -> np.ndarray:
        with torch.inference_mode():
            return np.array([predict(p) for p in paths])

    return BuiltPath(
        "anomalib-torch",
        "fp32",
        score_files,
        ctx.device,
        torch.get_num_threads(),
        batchable=False,
        artifacts={"anomalib_torch": str(export)},
    )


# OpenVINO's element type names -> this module's; its CPU default is bf16 where the CPU
# has AVX512-BF16 or AMX, so anomalib's inferencer runs bf16 there unless told otherwise
OPENVINO_PRECISIONS = {"bf16": "bf16", "f32": "fp32", "f16": "fp16"}


def _anomalib_openvino_path(ctx: PathContext) -> BuiltPath:
    """anomalib's export: `to_onnx` (kept as the ONNX artifact), then the IR exactly as
    `to_openvino` makes it from that file (`ov.convert_model`, saved uncompressed), run
    by anomalib's `OpenVINOInferencer` with its default config.

    The export is at a fixed input size, batch 1: anomalib's dynamic-shape export fixes
    PatchCore's batch at 2. Its input is `anomalib_input`, like anomalib's torch path."""
    import openvino as ov
    from anomalib.deploy import ExportType, OpenVINOInferencer
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    size = ctx.image_size
    root = ctx.out_dir / "anomalib"
    # Opset 18 is what torch's exporter writes: anomalib's default (14) makes it try a
    # down-conversion that fails on Pad/Reduce nodes, logs a traceback and keeps 18 anyway.
    onnx = ctx.model.to_onnx(
        root, input_size=(size, size), dynamic_axes={}, verbose=False, opset_version=18
    )
    xml = create_export_root(root, ExportType.OPENVINO) / "model.xml"
    ov.save_model(ov.convert_model(onnx), xml, compress_to_fp16=False)
    inferencer = OpenVINOInferencer(path=xml, device="CPU")
    compiled = inferencer.model  # compiled with OpenVINO's defaults: say what they chose
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    precision = OPENVINO_PRECISIONS.get(hint, hint)

    def predict(path: Path) -> float:
        return float(np.ravel(inferencer.predict(anomalib_input(path, size)).pred_score)[0])

    def score_files(paths: Sequence[Path]) -> np.ndarray:
        return np.array([predict(p) for p in paths])

    return BuiltPath(
        "anomalib-openvino",
        precision,
        score_files,
        "cpu",
        int(compiled.get_property("INFERENCE_NUM_THREADS")),
        batchable=False,
        artifacts={"onnx": str(onnx), "anomalib_openvino_ir": str(xml)},
    )


class PathUnsupported(RuntimeError):
    """The device cannot run this path (e.g. no bf16 units); stored as `skipped`."""


BUILDERS: dict[str, Callable[[PathContext], BuiltPath]] = {
    "torch-fp32": lambda ctx: _torch_path(ctx, "torch-fp32"),
    "torch-bf16": lambda ctx: _torch_path(ctx, "torch-bf16"),
    "torch-fp16-graph": lambda ctx: _torch_path(ctx, "torch-fp16-graph"),
    "openvino-fp32": lambda ctx: _openvino_path(ctx, "fp32"),
    "openvino-bf16": lambda ctx: _openvino_path(ctx, "bf16"),
    "openvino-int8": lambda ctx: _openvino_path(ctx, "int8"),
    "anomalib-torch": _anomalib_torch_path,
    "anomalib-openvino": _anomalib_openvino_path,
}
PRECISIONS = {
    "torch-fp32": "fp32",
    "torch-bf16": "bf16",
    "torch-fp16-graph": "fp16",
    "openvino-fp32": "fp32",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
    "anomalib-torch": "fp32",
    "anomalib-openvino": "fp32",
}


# --------------------------------------------------------------------------- timing


@dataclass
class PathTiming:
    """Timed batch-1 runs and the scores of the test pass (None past the time cap)."""

    single_ms: list[float]
    scores: np.ndarray | None
    warmup_runs: int
    throughput_ips: float
    throughput_batch: int


def time_path(
    built: BuiltPath,
    test_paths: Sequence[Path],
    settings: InferenceSettings,
    complete_test_pass: bool = False,
) -> PathTiming:
    """Warm up, score every test image at batch 1 (each one timed, decode included), add
    timed runs up to `settings.timed_runs`, then measure throughput at the stated batch.

    `settings.max_seconds_per_path` (`anomalib_max_seconds` for anomalib's own paths,
    when set) caps the timed work: a slow path stops adding runs
    once it is spent, and when even the test pass does not fit its scores are dropped
    (no AUROC is better than an AUROC on part of the test split), unless
    `complete_test_pass`."""
    paths = [Path(p) for p in test_paths]
    cap = settings.max_seconds_per_path
    if built.name.startswith("anomalib-") and settings.anomalib_max_seconds is not None:
        cap = settings.anomalib_max_seconds
    warmup_runs, start = 0, time.perf_counter()
    while warmup_runs < settings.warmup_runs and (
        warmup_runs == 0 or time.perf_counter() - start < settings.warmup_seconds
    ):
        built.score_files([paths[warmup_runs % len(paths)]])
        warmup_runs += 1
    single_ms: list[float] = []
    scores: list[float] = []
    began = time.perf_counter()

    def spent() -> float:
        return time.perf_counter() - began

    for path in paths:
        if not complete_test_pass and spent() > cap and len(single_ms) >= settings.min_timed_runs:
            break
        t0 = time.perf_counter()
        scores.append(float(built.score_files([path])[0]))
        single_ms.append((time.perf_counter() - t0) * 1000)
    complete = len(scores) == len(paths)
    index = 0
    while len(single_ms) < settings.timed_runs and spent() < cap:
        t0 = time.perf_counter()
        built.score_files([paths[index % len(paths)]])
        single_ms.append((time.perf_counter() - t0) * 1000)
        index += 1
    batch = settings.throughput_batch if built.batchable else 1
    if batch == 1:
        throughput = 1000 * len(single_ms) / sum(single_ms)
    else:
        rounds = max(1, min(settings.throughput_rounds, len(paths) // batch or 1))
        built.score_files(paths[:batch])  # untimed: the first run at a new shape compiles
        t0 = time.perf_counter()
        for r in range(rounds):
            built.score_files([paths[(r * batch + i) % len(paths)] for i in range(batch)])
        throughput = rounds * batch / (time.perf_counter() - t0)
    return PathTiming(
        single_ms=single_ms,
        scores=np.array(scores) if complete else None,
        warmup_runs=warmup_runs,
        throughput_ips=throughput,
        throughput_batch=batch,
    )


def image_auroc(scores: np.ndarray, labels: Sequence[int]) -> float | None:
    """Image AUROC of raw scores; None when scores are missing, non-finite or one class."""
    labels = np.asarray(labels)
    if scores is None or len(set(labels.tolist())) < 2 or not np.isfinite(scores).all():
        return None
    return float(roc_auc_score(labels, scores))


def _p95(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


# --------------------------------------------------------------------------- entry point


@dataclass
class InferencePaths:
    """The rows for the `latency` table and the files the paths wrote (IR, ONNX)."""

    latency: list[LatencyResult]
    artifacts: dict[str, str]


def measure_inference_paths(
    model: AnomalibModule,
    test_paths: Sequence[Path],
    test_labels: Sequence[int],
    train_paths: Sequence[Path],
    *,
    image_size: int,
    out_dir: Path,
    settings: InferenceSettings,
    device: str = "cpu",
    torch_export: Path | None = None,
    anomaly_paths: Sequence[Path] = (),
) -> InferencePaths:
    """Build, score and time every path in `settings.paths`; one `LatencyResult` each.

    `test_paths`/`test_labels` are the complete test split (label 1 = anomalous);
    `train_paths` are training images and `anomaly_paths` anomalous validation images
    (synthetic anomalies on held-out training images, or the validation folder's defects):
    the only images int8 calibration may see.
    `torch_export` is anomalib's torch export of `model` when one was written already.
    The reference for `auroc_delta` is `torch-fp32` (always measured first)."""
    if not test_paths or len(test_paths) != len(test_labels):
        raise ValueError("measure_inference_paths needs the test paths and one label each")
    test_set = {str(Path(p).resolve()) for p in test_paths}
    calibration = [*train_paths, *anomaly_paths]
    leaked = [str(p) for p in calibration if str(Path(p).resolve()) in test_set]
    if leaked:
        raise ValueError(f"calibration images must not be test images: {leaked[:3]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    ctx = PathContext(
        model=model,
        image_size=image_size,
        train_paths=[Path(p) for p in train_paths],
        anomaly_paths=[Path(p) for p in anomaly_paths],
        out_dir=out_dir,
        settings=settings,
        device=device,
        threads=settings.threads or torch.get_num_threads(),
        torch_export=Path(torch_export) if torch_export else None,
    )
    names = [REFERENCE_PATH, *(p for p in settings.paths if p != REFERENCE_PATH)]
    rows: list[LatencyResult] = []
    artifacts: dict[str, str] = {}
    reference: float | None = None
    for name in names:
        row = _measure_one(name, ctx, test_paths, test_labels, artifacts)
        if name == REFERENCE_PATH:
            reference = row.image_auroc
        if row.image_auroc is not None and reference is not None:
            row.auroc_delta = row.image_auroc - reference
        rows.append(row)
        logger.info("inference path %s", describe(row))
    return InferencePaths(latency=rows, artifacts=artifacts)


def _measure_one(
    name: str,
    ctx: PathContext,
    test_paths: Sequence[Path],
    test_labels: Sequence[int],
    artifacts: dict[str, str],
) -> LatencyResult:
    started = time.perf_counter()
    try:
        if name not in BUILDERS:
            raise ValueError(f"unknown inference path {name!r}: choose from {PATHS}")
        built = BUILDERS[name](ctx)
        setup_seconds = time.perf_counter() - started
        artifacts.update(built.artifacts)
        # this project's paths always score the whole test split (their AUROC decides
        # the deployable path); anomalib's are the speed comparison and may be cut short
        timing = time_path(built, test_paths, ctx.settings, not name.startswith("anomalib-"))
    except Exception as err:  # noqa: BLE001 - one path's failure is stored, the others run
        unsupported = isinstance(err, PathUnsupported)
        if not unsupported:
            logger.exception("inference path %s failed", name)
        return LatencyResult(
            p50_ms=None,
            p95_ms=None,
            throughput_ips=None,
            batch_size=1,
            device=ctx.device,
            threads=ctx.threads,
            peak_memory_mb=None,
            precision=PRECISIONS.get(name, "?"),
            path=name,
            status="skipped" if unsupported else "failed",
            error=f"{type(err).__name__}: {err}",
            setup_seconds=time.perf_counter() - started,
            hardware=device_name(ctx.device),
        )
    auroc = image_auroc(timing.scores, test_labels)
    return LatencyResult(
        p50_ms=statistics.median(timing.single_ms),
        p95_ms=_p95(timing.single_ms),
        throughput_ips=timing.throughput_ips,
        batch_size=timing.throughput_batch,
        device=built.device,
        threads=built.threads,
        peak_memory_mb=None,
        precision=built.precision,
        path=name,
        image_auroc=auroc,
        timed_runs=len(timing.single_ms),
        warmup_runs=timing.warmup_runs,
        setup_seconds=setup_seconds,
        calibration_paths=built.calibration_paths,
        error=None if auroc is not None else "AUROC not measured: test pass exceeded time cap",
        hardware=device_name(built.device),
    )


def describe(row: LatencyResult) -> str:
    if row.status != "ok":
        return f"{row.path}: {row.status}: {row.error}"
    auroc = "n/a" if row.image_auroc is None else f"{row.image_auroc:.4f}"
    delta = "" if row.auroc_delta is None else f" ({row.auroc_delta:+.4f})"
    return (
        f"{row.path}: p50 {row.p50_ms:.1f} ms, p95 {row.p95_ms:.1f} ms over {row.timed_runs} "
        f"runs, {row.throughput_ips:.1f} img/s at batch {row.batch_size}, AUROC {auroc}{delta}"
    )
