"""Greedy k-center coreset for PatchCore: anomalib's selection, in batched matrix products.

PatchCore (Roth et al., CVPR 2022, Sec. 3.2) keeps a coreset of the training patch
features chosen by greedy k-center selection (Sener & Savarese, ICLR 2018) on a sparse
random projection of the features. anomalib's `KCenterGreedy` takes one step per
coreset point, and each step computes the distance from the new center to every patch:
a memory-bound pass over all features, one at a time (17,600 passes for a 10 % coreset
of a real MVTec category's 176k patches; `benchmarks/coreset_time.py` times both).

`greedy_coreset_indices` selects the same points from the same start, but computes the
distances for many future centers at once. The next center is always the patch farthest
from the chosen ones; the `lookahead` farthest patches are the only ones that can be
chosen before the farthest of the others is, so their distances to every patch come
from one matrix product (fp32, both cores), and each step only folds one precomputed
row into the running minimum and takes its argmax. When the argmax is not among the
precomputed patches, the next `lookahead` farthest are taken. Patches near a new center
drop out of the lookahead, so some rows go unused: about 1 in 3 on real features.

Features are centred before the products (distances do not change, rounding shrinks);
all distances are exact fp32, so the ranking is anomalib's up to float rounding on
near-ties. bf16 products are not used: their rounding (about 1 % of a squared distance
at these norms) reorders the farthest points, and an exact re-check would cost one more
pass over all patches per step, more than the fp32 product costs.

Every tensor is created on the device of the features; the thread count is raised only
around the matrix product (per-step work is too small for a second thread to pay for
its fork and join) and restored on exit.

Example:
    >>> embedding = torch.randn(5000, 64)
    >>> coreset = embedding[fast_coreset_indices(embedding, sampling_ratio=0.1)]
    >>> coreset.shape
    torch.Size([500, 64])
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import torch
from anomalib.models import Patchcore
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

logger = logging.getLogger(__name__)

# (patches chosen so far, coreset size, seconds since the start)
CoresetProgress = Callable[[int, int, float], None]
PROGRESS_EVERY_S = 5.0
DEFAULT_LOOKAHEAD = 64


def _log_progress(done: int, total: int, seconds: float) -> None:
    logger.info("coreset %d/%d patches (%.0f%%), %.0f s", done, total, 100 * done / total, seconds)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads; the previous count comes back after."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def greedy_coreset_indices(
    features: torch.Tensor,
    coreset_size: int,
    start_index: int = 0,
    *,
    lookahead: int = DEFAULT_LOOKAHEAD,
    progress: CoresetProgress | None = _log_progress,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> torch.Tensor:
    """Greedy k-center (farthest-point) selection of `coreset_size` rows of `features`.

    Each step adds the row farthest from all rows chosen so far, as anomalib's
    `KCenterGreedy` does on the same features and start index. Returns the indices (on
    the features' device) in the order chosen. `progress(done, total, seconds)` is
    called every `progress_every_s` seconds and at the end (default: a log line).
    """
    n = features.shape[0]
    if not 0 < coreset_size <= n:
        raise ValueError(f"coreset_size must be in 1..{n}, got {coreset_size}")
    if not 0 <= start_index < n:
        raise ValueError(f"start_index must be in 0..{n - 1}, got {start_index}")
    if lookahead < 1:
        raise ValueError(f"lookahead must be at least 1, got {lookahead}")
    points = _augmented_points(features)
    min_sq = torch.full((n,), float("inf"), device=points.device)
    selected = torch.empty(coreset_size, dtype=torch.long, device=points.device)
    rows: dict[int, int] = {}  # patch index -> its row in `distances`
    distances = points[:0, :0]  # filled at the first step
    threads = torch.get_num_threads() if points.device.type == "cpu" else None
    start = last_report = time.monotonic()
    index = int(start_index)
    with _torch_threads(1) if threads else contextlib.nullcontext():
        for slot in range(coreset_size):
            selected[slot] = index
            if index not in rows:
                with _torch_threads(threads) if threads else contextlib.nullcontext():
                    rows, distances = _lookahead_distances(points, min_sq, index, lookahead)
            torch.minimum(min_sq, distances[rows[index]], out=min_sq)
            min_sq[index] = 0.0
            if slot + 1 < coreset_size:
                index = int(torch.argmax(min_sq))
            if progress is not None and time.monotonic() - last_report >= progress_every_s:
                last_report = time.monotonic()
                progress(slot + 1, coreset_size, last_report - start)
    if progress is not None:
        progress(coreset_size, coreset_size, time.monotonic() - start)
    return selected


def _augmented_points(features: torch.Tensor) -> torch.Tensor:
    """Rows [x, |x|^2, 1] of the centred fp32 features (centring keeps distances and
    shrinks the rounding of |x|^2 - 2 x.c + |c|^2)."""
    n, dim = features.shape
    points = torch.empty(n, dim + 2, device=features.device)
    centred = points[:, :dim]
    centred.copy_(features.detach())
    centred.sub_(centred.mean(dim=0))
    points[:, dim] = centred.pow(2).sum(dim=1)
    points[:, dim + 1] = 1.0
    return points


def _lookahead_distances(
    points: torch.Tensor, min_sq: torch.Tensor, index: int, lookahead: int
) -> tuple[dict[int, int], torch.Tensor]:
    """Squared distances from `index` and the farthest patches (by `min_sq`) to all patches.

    One (lookahead x n) fp32 product of [-2c, 1, |c|^2] with the rows [x, |x|^2, 1]:
    |x|^2 - 2 x.c + |c|^2 with no further pass. A patch equal to a center may come out a
    rounding error below 0; it is never the farthest.
    """
    n, width = points.shape
    dim = width - 2
    if torch.isinf(min_sq).all():  # first step: nothing chosen yet, so no order to look at
        centers = torch.tensor([index], device=points.device)
    else:
        centers = torch.topk(min_sq, min(lookahead, n), sorted=False).indices
        if not bool((centers == index).any()):
            centers = torch.cat([centers[:-1], torch.tensor([index], device=points.device)])
    chosen = points[centers]
    queries = torch.empty_like(chosen)
    torch.mul(chosen[:, :dim], -2.0, out=queries[:, :dim])
    queries[:, dim] = 1.0
    queries[:, dim + 1] = chosen[:, dim]
    distances = queries @ points.T
    return {int(c): row for row, c in enumerate(centers.tolist())}, distances


def fast_coreset_indices(
    embedding: torch.Tensor,
    sampling_ratio: float,
    start_index: int | None = None,
    *,
    progress: CoresetProgress | None = _log_progress,
) -> torch.Tensor:
    """Indices of PatchCore's coreset: greedy k-center from a random start (global torch
    RNG, as anomalib) on anomalib's sparse random projection (eps=0.9) of the embedding.

    The projection only serves to cut dimensions (the paper's 1536 to about 300), so it
    is skipped when it would add them (e.g. EfficientNet-Lite0's 152 against ~300): the
    distances are then exact instead of approximated."""
    n, dim = embedding.shape
    coreset_size = int(n * sampling_ratio)
    if coreset_size <= 0:
        raise ValueError(
            f"coreset of {n} patches at sampling_ratio {sampling_ratio} would be empty"
        )
    features = embedding
    if SparseRandomProjection._johnson_lindenstrauss_min_dim(n, eps=0.9) < dim:  # noqa: SLF001
        # anomalib builds its projection matrix without a device: make it the embedding's
        with torch.device(embedding.device):
            features = SparseRandomProjection(eps=0.9).fit(embedding).transform(embedding)
    if start_index is None:
        start_index = int(torch.randint(high=n, size=(1,), device=embedding.device))
    return greedy_coreset_indices(features, coreset_size, start_index, progress=progress)


class FastCoresetPatchcore(Patchcore):
    """anomalib's Patchcore whose memory bank is chosen by `fast_coreset_indices`.

    Set `coreset_progress` to a `(done, total, seconds) -> None` callable to follow the
    selection (called every few seconds; default: a log line). It is an attribute, not an
    init argument, so that checkpoints' hyperparameters stay plain values.
    """

    coreset_progress: CoresetProgress | None = staticmethod(_log_progress)

    def fit(self) -> None:
        store = self.model.embedding_store
        if not store:
            raise ValueError("embedding store is empty: run training batches before fit()")
        embedding = torch.vstack(store)
        store.clear()
        logger.info(
            "coreset: %d of %d patches (greedy k-center, batched lookahead)",
            int(embedding.shape[0] * self.coreset_sampling_ratio),
            embedding.shape[0],
        )
        indices = fast_coreset_indices(
            embedding, self.coreset_sampling_ratio, progress=self.coreset_progress
        )
        self.model.memory_bank = embedding[indices]
