"""The fast greedy k-center coreset selects what anomalib's KCenterGreedy selects, on the
device of its input, and leaves no process-global state behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from benchmarks.coreset_time import anomalib_steps
from tasks.models.patchcore.coreset import (
    FastCoresetPatchcore,
    fast_coreset_indices,
    greedy_coreset_indices,
)


def _clustered(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=generator) * 4
    labels = torch.randint(0, 20, (n,), generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator)


def _covering_radius(features: torch.Tensor, selected: list[int]) -> float:
    return float(torch.cdist(features, features[selected]).min(1).values.max())


@contextlib.contextmanager
def _default_device(device: str) -> Iterator[None]:
    previous = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(previous)


def test_same_selection_as_anomalib_kcenter_greedy() -> None:
    features = _clustered(3000, 32)
    reference = anomalib_steps(features, 150, start=11)
    fast = greedy_coreset_indices(features, 150, start_index=11, lookahead=16).tolist()
    assert fast[0] == 11
    assert len(set(fast)) == 150
    # Float rounding may swap near-ties; the selection must agree almost everywhere
    # and cover the data as tightly.
    agreement = sum(a == b for a, b in zip(fast, reference, strict=True)) / 150
    assert agreement >= 0.95
    assert _covering_radius(features, fast) <= _covering_radius(features, reference) * 1.01


def test_lookahead_does_not_change_the_selection() -> None:
    """Precomputed rows are only a cache: any lookahead gives the step-by-step result."""
    features = _clustered(2000, 16, seed=3)
    one_at_a_time = greedy_coreset_indices(features, 200, start_index=5, lookahead=1)
    batched = greedy_coreset_indices(features, 200, start_index=5, lookahead=37)
    assert torch.equal(one_at_a_time, batched)


def test_farthest_first_property() -> None:
    """Greedy k-center's guarantee (the 2-approximation): the centers are pairwise at
    least the final covering radius apart."""
    features = _clustered(2000, 16, seed=1)
    fast = greedy_coreset_indices(features, 100, start_index=0).tolist()
    centers = features[fast]
    pairwise = torch.cdist(centers, centers) + torch.eye(100) * 1e9
    assert pairwise.min() >= _covering_radius(features, fast) * (1 - 1e-4)


def test_rejects_impossible_size() -> None:
    with pytest.raises(ValueError, match="coreset_size"):
        greedy_coreset_indices(torch.randn(10, 4), 11)
    with pytest.raises(ValueError, match="start_index"):
        greedy_coreset_indices(torch.randn(10, 4), 5, start_index=10)


def test_progress_is_reported_and_threads_are_restored() -> None:
    calls: list[tuple[int, int]] = []
    threads = torch.get_num_threads()
    greedy_coreset_indices(
        _clustered(500, 8),
        40,
        progress=lambda done, total, _seconds: calls.append((done, total)),
        progress_every_s=0.0,
    )
    assert torch.get_num_threads() == threads
    assert calls[-1] == (40, 40)
    assert [done for done, _ in calls[:-1]] == list(range(1, 41))


def test_coreset_allocates_on_its_inputs_device() -> None:
    """With the default device set to `meta`, any tensor made without the input's device
    lands on meta and breaks the arithmetic with the CPU data."""
    features = _clustered(600, 200, seed=4)  # 200 dims: anomalib's projection is used
    with _default_device("meta"):
        indices = fast_coreset_indices(features, 0.1, start_index=7, progress=None)
        without_projection = greedy_coreset_indices(features[:, :24], 30, 3, lookahead=8)
    assert indices.device.type == "cpu"
    assert without_projection.device.type == "cpu"
    assert indices.shape == (60,)
    assert len(set(indices.tolist())) == 60
    assert torch.get_default_device().type == "cpu"


def test_patchcore_fit_allocates_on_the_embeddings_device() -> None:
    model = FastCoresetPatchcore(
        backbone="resnet18", layers=("layer1",), pre_trained=False, coreset_sampling_ratio=0.1
    )
    images = torch.rand(2, 3, 64, 64)
    with _default_device("meta"):
        model.model.train()
        with torch.no_grad():
            model.model(images)  # anomalib collects the patch embedding
        embedding = torch.vstack(model.model.embedding_store).clone()
        model.fit()
    bank = model.model.memory_bank
    assert bank.device.type == "cpu"
    assert bank.shape == (int(len(embedding) * 0.1), embedding.shape[1])


def test_patchcore_fit_keeps_coreset_rows_of_the_embedding() -> None:
    model = FastCoresetPatchcore(
        backbone="resnet18", layers=("layer1",), pre_trained=False, coreset_sampling_ratio=0.1
    )
    reports: list[int] = []
    model.coreset_progress = lambda done, _total, _seconds: reports.append(done)
    embedding = _clustered(1000, 24, seed=2)
    model.model.embedding_store.extend([embedding[:600], embedding[600:]])
    model.fit()
    bank = model.model.memory_bank
    assert bank.shape == (100, 24)
    assert not model.model.embedding_store
    assert reports[-1] == 100
    # every row of the memory bank is a training patch
    assert (bank[:, None] == embedding[None]).all(-1).any(1).all()
