"""The `torch-fp16-graph` path on a CUDA GPU: CUDA graphs replay eager fp16's numbers.

These need a CUDA device and are skipped, with that reason, where there is none (CI has
none); run them on a GPU machine: `python -m pytest -q tests/test_gpu_paths.py`. On a CPU
the path itself is stored as `skipped` (tests/test_inference.py checks that).
"""

from __future__ import annotations

import pytest
import torch

from tasks.inference.torch_backend import torch_scorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _efficientad():
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384, model_size="small").eval()
    for value in model.mean_std.values():
        value.data.uniform_(0.5, 1.5)
    for name, value in model.quantiles.items():
        value.data.fill_(0.1 if name.startswith("qa") else 0.6)
    return model


def _patchcore():
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    torch.manual_seed(0)
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False)
    model.memory_bank = torch.randn(2000, 384)
    return model.eval()


@pytest.mark.parametrize("build", [_efficientad, _patchcore], ids=["efficientad", "patchcore"])
def test_cuda_graphs_replay_eager_fp16_for_each_shape_with_fresh_images(build):
    model = build()
    eager = torch_scorer(model, device="cuda", precision="fp16")
    graphed = torch_scorer(model, device="cuda", precision="fp16", cuda_graph=True)
    for batch in (1, 4, 1, 1):  # a new shape captures again; a known one replays
        images = torch.rand(batch, 3, 256, 256)
        expected, got = eager(images), graphed(images)
        peak = expected.anomaly_map.abs().max()
        assert got.anomaly_map.shape == expected.anomaly_map.shape
        assert torch.allclose(got.anomaly_map, expected.anomaly_map, atol=2e-3 * peak)
        assert torch.allclose(got.pred_score, expected.pred_score, atol=2e-3 * peak)
    # outputs are copies: a later replay does not change what an earlier call returned
    first = graphed(torch.zeros(1, 3, 256, 256)).pred_score.clone()
    kept = graphed(torch.zeros(1, 3, 256, 256))
    graphed(torch.ones(1, 3, 256, 256))
    assert torch.equal(kept.pred_score, first)
