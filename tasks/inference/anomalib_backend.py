"""anomalib's own two inference paths, the comparison for this project's paths.

- `anomalib-torch`: anomalib's default path, `anomalib.deploy.TorchInferencer` on
  anomalib's torch export (`Engine.export(..., ExportType.TORCH)`);
- `anomalib-openvino`: anomalib's own OpenVINO export (`AnomalibModule.to_openvino`,
  through ONNX) run by `anomalib.deploy.OpenVINOInferencer` with its default config.

Both are given `anomalib_input`: the file decoded and resized as for every other path,
so all paths score the same pixels and differ only in how they run the model.

Example:
    >>> built = anomalib_torch_path(ctx)
    >>> built.score_files(test_paths)  # raw scores, one image at a time
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tasks.data.decode import decode
from tasks.inference.path_types import BuiltPath, PathContext


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
    export transform, which has no antialiasing (`PreProcessor.forward`), unlike training,
    so given full-size files it scores other pixels than the trained model saw
    (`tests/test_resize.py`; docs/performance.md)."""
    return decode(path, image_size).astype(np.float32) / 255.0


def anomalib_torch_path(ctx: PathContext) -> BuiltPath:
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


def anomalib_openvino_path(ctx: PathContext) -> BuiltPath:
    """anomalib's export: `to_onnx` (kept as the ONNX artifact), then the IR exactly as
    `to_openvino` makes it from that file (`ov.convert_model`, saved uncompressed), run
    by anomalib's `OpenVINOInferencer` with its default config.

    The export is at a fixed input size, batch 1: anomalib's dynamic-shape export does
    not keep the batch dynamic for every model. Its input is `anomalib_input`, like
    anomalib's torch path."""
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
    inferencer = _inferencer_caching_in(root / "openvino_cache", OpenVINOInferencer)(
        path=xml, device="CPU"
    )
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


def _inferencer_caching_in(cache_dir: Path, inferencer: type) -> type:
    """anomalib's `OpenVINOInferencer` with its compile cache in `cache_dir` (under the
    cell's output folder). Its own `load_model` puts the cache (tens of MB of `.blob`
    files) in `openvino_cache` under the current directory, wherever the run was started;
    this one reads and compiles the IR as it does, with anomalib's config, and nothing
    else changes: pre-processing, prediction and post-processing are anomalib's."""

    class CachingInCellFolder(inferencer):
        def load_model(self, path: str | Path) -> tuple:
            import openvino as ov

            core = ov.Core()
            core.set_property({"CACHE_DIR": str(cache_dir)})
            compiled = core.compile_model(
                model=core.read_model(Path(path)), device_name=self.device, config=self.config
            )
            return compiled.input(0), compiled.output(0), compiled

    return CachingInCellFolder
