"""How a model's exported inference paths differ from its torch ones (`Deployment`).

A model's registry entry (`tasks.models.registry`) holds one; the OpenVINO paths read
it (`tasks.inference.graph.model_graph`, `tasks.inference.openvino_backend`). The
default, `AS_TRAINED`, exports the model as anomalib computes it and quantises all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # naming a model's deployment needs no torch
    from torch import nn


@dataclass(frozen=True)
class Deployment:
    """How a model's exported paths differ from its torch paths; the defaults: not at all.

    `export_graph` maps the torch model to an equivalent graph that exports and runs
    faster (same weights, the same numbers to float rounding), or to None where it has
    no such form (e.g. an unsupported size). `int8_fp32_top_level` keeps the ops of the
    model's own forward, the arithmetic between its sub-networks, in fp32 when the graph
    is quantised to int8; its sub-networks are quantised either way."""

    export_graph: Callable[[nn.Module], nn.Module | None] | None = None
    int8_fp32_top_level: bool = False


AS_TRAINED = Deployment()
