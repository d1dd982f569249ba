"""One score set: the per-image anomaly scores of one (run, model, category, path).

The `scores` table of the store holds, per image, its path, label (0 good, 1 anomalous),
defect type and score; `ImageScores` is that table's rows for one cell, checked once, so
that the comparisons built on it (`tasks.stats.regression`, `tasks.stats.recommendation`)
can tell whether two score sets cover the same images and line them up by path.

Example:
    >>> rows = [{"path": "a.png", "label": 0, "defect_type": "good", "score": 0.1},
    ...         {"path": "b.png", "label": 1, "defect_type": "crack", "score": 0.9}]
    >>> ImageScores.from_rows(rows).labels.tolist()
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ImageScores:
    """Per-image scores; every path once, labels 0/1, finite scores (checked on creation)."""

    paths: tuple[str, ...]
    labels: np.ndarray  # int64, 0 good, 1 anomalous
    scores: np.ndarray  # float64, higher = more anomalous
    defect_types: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        scores = np.asarray(self.scores, dtype=np.float64)
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores)
        n = len(self.paths)
        if labels.shape != (n,) or scores.shape != (n,):
            raise ValueError(
                f"{n} paths, labels {labels.shape} and scores {scores.shape} must match"
            )
        if self.defect_types is not None and len(self.defect_types) != n:
            raise ValueError(f"{len(self.defect_types)} defect types for {n} images")
        if len(set(self.paths)) != n:
            raise ValueError("each image path must appear once in a score set")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 (good) or 1 (anomalous)")
        if not np.isfinite(scores).all():
            bad = [p for p, s in zip(self.paths, scores, strict=True) if not np.isfinite(s)]
            raise ValueError(f"{len(bad)} scores are not finite, e.g. {bad[0]}")

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping]) -> ImageScores:
        """From the store's `scores` rows: mappings with path, label, score, defect_type."""
        rows = list(rows)
        return cls(
            paths=tuple(str(r["path"]) for r in rows),
            labels=np.array([r["label"] for r in rows], dtype=np.int64),
            scores=np.array([r["score"] for r in rows], dtype=np.float64),
            defect_types=tuple(str(r.get("defect_type")) for r in rows),
        )

    @property
    def n_normal(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def n_anomalous(self) -> int:
        return int((self.labels == 1).sum())

    def label_of(self) -> dict[str, int]:
        return dict(zip(self.paths, self.labels.tolist(), strict=True))

    def same_images(self, other: ImageScores) -> bool:
        """True when both cover the same paths with the same label for each."""
        return self.label_of() == other.label_of()

    def aligned_to(self, other: ImageScores) -> ImageScores:
        """These scores in `other`'s image order; raises ValueError unless `same_images`."""
        if not self.same_images(other):
            raise ValueError("the two score sets do not cover the same images and labels")
        index = {p: i for i, p in enumerate(self.paths)}
        order = np.array([index[p] for p in other.paths], dtype=np.int64)
        types = None if self.defect_types is None else tuple(self.defect_types[i] for i in order)
        return ImageScores(other.paths, self.labels[order], self.scores[order], types)
