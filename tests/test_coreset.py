"""The fast greedy k-center coreset selects what anomalib's KCenterGreedy selects."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components import KCenterGreedy

from tasks.coreset import FastCoresetPatchcore, greedy_coreset_indices


def _clustered(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=generator) * 4
    labels = torch.randint(0, 20, (n,), generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator)


def _anomalib_selection(features: torch.Tensor, size: int, start: int) -> list[int]:
    """anomalib's own update/argmax steps, run on given features from a given start."""
    sampler = KCenterGreedy(embedding=features, sampling_ratio=size / len(features))
    sampler.features = features
    sampler.reset_distances()
    index = torch.tensor(start)
    selected = [start]
    for _ in range(size - 1):
        sampler.update_distances(index)
        index = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, index.view(1, 1), 0.0)
        selected.append(int(index))
    return selected


def _covering_radius(features: torch.Tensor, selected: list[int]) -> float:
    return float(torch.cdist(features, features[selected]).min(1).values.max())


def test_same_selection_as_anomalib_kcenter_greedy() -> None:
    features = _clustered(3000, 32)
    reference = _anomalib_selection(features, 150, start=11)
    fast = greedy_coreset_indices(features, 150, start_index=11).tolist()
    assert fast[0] == 11
    assert len(set(fast)) == 150
    # Float rounding may swap near-ties; the selection must agree almost everywhere
    # and cover the data as tightly.
    agreement = sum(a == b for a, b in zip(fast, reference, strict=True)) / 150
    assert agreement >= 0.95
    assert _covering_radius(features, fast) <= _covering_radius(features, reference) * 1.01


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


def test_patchcore_fit_keeps_coreset_rows_of_the_embedding() -> None:
    model = FastCoresetPatchcore(
        backbone="resnet18", layers=("layer1",), pre_trained=False, coreset_sampling_ratio=0.1
    )
    embedding = _clustered(1000, 24, seed=2)
    model.model.embedding_store.extend([embedding[:600], embedding[600:]])
    model.fit()
    bank = model.model.memory_bank
    assert bank.shape == (100, 24)
    assert not model.model.embedding_store
    # every row of the memory bank is a training patch
    assert (bank[:, None] == embedding[None]).all(-1).any(1).all()
