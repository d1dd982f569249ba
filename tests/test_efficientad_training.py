"""EfficientAD's cheaper training losses equal anomalib's, draw for draw."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from tasks.models.efficientad.training import (
    TeacherCache,
    cpu_training_layout,
    efficientad_losses,
    hard_feature_loss,
    pdn_forward,
    resolve_training_precision,
)


def _model(size: str) -> EfficientAdModel:
    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384, model_size=size).train()
    for value in model.mean_std.values():
        value.data.uniform_(0.5, 1.5)  # a standardised teacher, as after on_train_start
    return model


@pytest.mark.parametrize("size", ["small", "medium"])
def test_losses_equal_anomalibs_from_the_same_random_draws(size: str) -> None:
    model = _model(size)
    images, penalty = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    torch.manual_seed(5)
    reference = model(images, penalty)  # jitter choice and autoencoder dropout draw here
    torch.manual_seed(5)
    cache = TeacherCache()
    ours = efficientad_losses(model, images, penalty, cache, ["a.png"])
    torch.manual_seed(5)
    from_cache = efficientad_losses(model, images, penalty, cache, ["a.png"])
    assert len(cache) == 1
    for expected, got, cached in zip(reference, ours, from_cache, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-6)


def test_gradients_equal_anomalibs() -> None:
    model = _model("small")
    images, penalty = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    torch.manual_seed(7)
    sum(model(images, penalty)).backward()
    expected = [p.grad.clone() for p in model.student.parameters()]
    model.zero_grad()
    torch.manual_seed(7)
    sum(efficientad_losses(model, images, penalty)).backward()
    # Batched and split convolutions sum in another order, and CPUs of different vector
    # widths order fp32 sums differently again: an early bias gradient (a sum over 64k
    # positions) differed by 2.3e-4 of its largest value on an AVX2 CPU. Dropping the
    # penalty term, or half of it, moves the gradients by 3x or 1.5x the 1e-3 allowed.
    for want, param in zip(expected, model.student.parameters(), strict=True):
        torch.testing.assert_close(param.grad, want, rtol=0, atol=1e-3 * want.abs().max().item())


def test_partial_last_layer_equals_the_full_network() -> None:
    model = _model("small")
    images = torch.rand(2, 3, 64, 64)
    full = model.student(images)
    assert torch.equal(pdn_forward(model.student, images, slice(384, None)), full[:, 384:])
    with pytest.raises(TypeError, match="patch description network"):
        pdn_forward(torch.nn.Identity(), images, slice(None))


def test_hard_feature_loss_is_the_mean_above_the_quantile() -> None:
    distances = torch.rand(1, 384, 30, 30) ** 3
    hard = distances[distances >= torch.quantile(distances, 0.999)].mean()
    torch.testing.assert_close(hard_feature_loss(distances), hard)


def test_teacher_cache_keeps_to_its_budget() -> None:
    cache = TeacherCache(max_bytes=2 * 4 * 10)  # two (1, 10) float tensors
    cache.put(["a", "b", "c"], torch.ones(3, 10))
    assert len(cache) == 2
    assert cache.get(["a", "b"]).shape == (2, 10)
    assert cache.get(["a", "c"]) is None
    assert cache.get(None) is None


def test_precision_auto_follows_the_hardware() -> None:
    assert resolve_training_precision("32-true", "cpu") == "32-true"
    assert resolve_training_precision("bf16-mixed", "cpu") == "bf16-mixed"
    expected = "bf16-mixed" if torch.cpu._is_amx_tile_supported() else "32-true"  # noqa: SLF001
    assert resolve_training_precision("auto", "cpu") == expected


@pytest.mark.parametrize(
    ("capability", "layout"),
    [
        ("AVX512", torch.channels_last),
        ("AVX512_BF16", torch.channels_last),
        ("AVX2", torch.contiguous_format),
        ("DEFAULT", torch.contiguous_format),
    ],
)
def test_training_layout_follows_the_cpu_kernels(monkeypatch, capability, layout) -> None:
    # channels-last was the quicker on an AVX-512 Xeon, contiguous on an AVX2 EPYC
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert cpu_training_layout() == layout


def test_models_score_channels_last_on_a_cpu_and_are_left_nchw() -> None:
    from anomalib.models import EfficientAd

    from tasks.training.attempts import inference_layout

    model = EfficientAd(model_size="small")
    model.model.to(memory_format=torch.channels_last)  # as trained on AVX-512
    before = {name: w.detach().clone() for name, w in model.named_parameters()}
    with inference_layout(model):
        assert model.model.student.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    for name, weights in model.named_parameters():
        assert weights.is_contiguous() and torch.equal(weights, before[name]), name
