"""Greedy k-center coreset for PatchCore, exact and fast on CPU.

PatchCore (Roth et al., CVPR 2022, Sec. 3.2) keeps a coreset of the training patch
features chosen by greedy k-center selection (Sener & Savarese, ICLR 2018) on a random
projection of the features. anomalib's `KCenterGreedy` recomputes the distance from the
new center to every patch at every step: ~10 steps/s on 2 cores for a real category
(~212k patches), so the paper's 10% coreset takes about half an hour.

`greedy_coreset_indices` selects exactly the same points (same start, same projected
features) but skips patches that provably cannot move. Every patch remembers the
center it is nearest to; by the triangle inequality, a patch x owned by center c_j
cannot get closer to a new center c when d(c_j, c) >= 2 d(x, c_j). So each step only
touches the patches of centers within twice their covering radius of c, which soon is
a small fraction of all patches (the trick of Elkan's exact k-means, ICML 2003).

Example:
    >>> embedding = torch.randn(5000, 64)
    >>> coreset = embedding[fast_coreset_indices(embedding, sampling_ratio=0.1)]
    >>> coreset.shape
    torch.Size([500, 64])
"""

from __future__ import annotations

import logging

import torch
from anomalib.models import Patchcore
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

logger = logging.getLogger(__name__)

# Prune only with a margin, so float rounding can never skip a patch the plain
# algorithm would have updated.
_PRUNE_MARGIN = 1e-3
# Above this share of candidate patches, one dense pass beats gathering rows.
_DENSE_SHARE = 0.3


def greedy_coreset_indices(
    features: torch.Tensor, coreset_size: int, start_index: int = 0
) -> torch.Tensor:
    """Greedy k-center (farthest-point) selection of `coreset_size` rows of `features`.

    Each step adds the row farthest from all rows chosen so far, as anomalib's
    `KCenterGreedy` does on the same features and start index. Squared distances come
    from one matrix-vector product, |x|^2 - 2 x.c + |c|^2, in float32.
    """
    n = features.shape[0]
    if not 0 < coreset_size <= n:
        raise ValueError(f"coreset_size must be in 1..{n}, got {coreset_size}")
    # Thousands of small memory-bound steps: OpenMP's fork/join per op costs more than a
    # second thread gains, and on a busy machine each join waits a scheduler slice
    # (measured 47 s -> 8 s for 300 steps on 51k patches with other jobs running).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _greedy(features.float().contiguous(), coreset_size, int(start_index))
    finally:
        torch.set_num_threads(threads)


def _greedy(features: torch.Tensor, coreset_size: int, index: int) -> torch.Tensor:
    n, dim = features.shape
    sq_norms = features.pow(2).sum(1)
    min_sq = torch.full((n,), float("inf"))  # squared distance to the nearest chosen center
    owner = torch.zeros(n, dtype=torch.long)  # slot of that center
    radius = torch.zeros(coreset_size)  # largest distance among each slot's patches
    centers = torch.empty(coreset_size, dim)
    selected = torch.empty(coreset_size, dtype=torch.long)
    dense_sq = torch.empty(n)

    for slot in range(coreset_size):
        selected[slot] = index
        center = features[index]
        centers[slot] = center
        if slot == 0:
            active = torch.zeros(0, dtype=torch.bool)
            candidates = None
        else:
            gap = torch.linalg.norm(centers[:slot] - center, dim=1)
            active = gap <= 2 * radius[:slot] * (1 + _PRUNE_MARGIN) + _PRUNE_MARGIN
            candidates = active[owner].nonzero().squeeze(1)
            if candidates.numel() > _DENSE_SHARE * n:
                candidates = None
        if candidates is None:  # all patches, no gather
            torch.addmv(sq_norms, features, center, beta=1, alpha=-2, out=dense_sq)
            dense_sq.add_(sq_norms[index]).clamp_(min=0)
            closer = dense_sq < min_sq
            torch.minimum(min_sq, dense_sq, out=min_sq)
            owner.masked_fill_(closer, slot)
            touched_owner, touched_sq = owner, min_sq
            radius[:slot] = 0.0
        else:
            sq = torch.addmv(sq_norms[candidates], features[candidates], center, alpha=-2)
            sq.add_(sq_norms[index]).clamp_(min=0)
            closer = sq < min_sq[candidates]
            moved = candidates[closer]
            min_sq[moved] = sq[closer]
            owner[moved] = slot
            touched_owner, touched_sq = owner[candidates], min_sq[candidates]
            radius[:slot].masked_fill_(active, 0.0)
        min_sq[index] = 0.0
        # Every patch of the active slots and of the new slot was touched, so their
        # radii are recomputed exactly; the other slots' radii did not change.
        radius[slot] = 0.0
        radius.scatter_reduce_(0, touched_owner, touched_sq.sqrt(), reduce="amax")
        if slot + 1 < coreset_size:
            index = int(torch.argmax(min_sq))
    return selected


def fast_coreset_indices(
    embedding: torch.Tensor, sampling_ratio: float, start_index: int | None = None
) -> torch.Tensor:
    """Indices of PatchCore's coreset: exact greedy k-center from a random start (global
    torch RNG, as anomalib) on anomalib's sparse random projection (eps=0.9) of the
    embedding. The projection only serves to cut dimensions, so it is skipped when it
    would not (e.g. Lite0's 152 dims against ~250 projected): distances are then exact."""
    n, dim = embedding.shape
    coreset_size = int(n * sampling_ratio)
    if coreset_size <= 0:
        raise ValueError(
            f"coreset of {n} patches at sampling_ratio {sampling_ratio} would be empty"
        )
    features = embedding
    if SparseRandomProjection._johnson_lindenstrauss_min_dim(n, eps=0.9) < dim:  # noqa: SLF001
        features = SparseRandomProjection(eps=0.9).fit(embedding).transform(embedding)
    if start_index is None:
        start_index = int(torch.randint(high=n, size=(1,)))
    return greedy_coreset_indices(features, coreset_size, start_index)


class FastCoresetPatchcore(Patchcore):
    """anomalib's Patchcore whose memory bank is chosen by `fast_coreset_indices`."""

    def fit(self) -> None:
        store = self.model.embedding_store
        if not store:
            raise ValueError("embedding store is empty: run training batches before fit()")
        embedding = torch.vstack(store)
        store.clear()
        logger.info(
            "coreset: %d of %d patches (greedy k-center, pruned)",
            int(embedding.shape[0] * self.coreset_sampling_ratio),
            embedding.shape[0],
        )
        indices = fast_coreset_indices(embedding, self.coreset_sampling_ratio)
        self.model.memory_bank = embedding[indices]
