"""Geometry of a recipe's network: the feature-map side after every layer, as pure functions.

Shared by recipe validation (an input too small for the network is a recipe error) and the model
(stage pool names, the aux heads' and the classifier's input sizes). It reads the recipe's spec
types by their attributes only and imports them just for type checking: ``recipe`` imports this
module, so importing ``recipe`` back at run time would be a cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .recipe import ModelSpec, PoolSpec


def pool_out(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output side of a pooling window, with PyTorch's rule for ceil mode (0: it does not fit)."""
    if size < 1 or size + 2 * padding < kernel:
        return 0
    span = size + 2 * padding - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution (0: the kernel does not fit)."""
    if size < 1 or size + 2 * padding < kernel:
        return 0
    return (size + 2 * padding - kernel) // stride + 1


def apply_pool(spec: PoolSpec, size: int, ceil_mode: bool) -> int:
    """Output side of a pool spec; ceil mode applies to max pools only, as the model builds them."""
    if spec.output_size is not None:
        return spec.output_size
    assert spec.kernel is not None
    stride = spec.stride or spec.kernel
    return pool_out(size, spec.kernel, stride, spec.padding, ceil_mode and spec.type == "max")


@dataclass(frozen=True)
class FeatureMap:
    """Shape after a named layer: channels x size x size."""

    name: str
    kind: str
    channels: int
    size: int


def trace_shapes(model: ModelSpec, input_size: int) -> list[FeatureMap]:
    """Feature-map shapes after each stem layer, Inception module, stage pool and the head pool."""
    out: list[FeatureMap] = []
    channels, size = model.in_channels, input_size
    for layer in model.stem:
        if layer.layer == "conv":
            assert layer.out is not None
            channels, size = model.width(layer.out), conv_out(size, layer.kernel, layer.stride,
                                                              layer.padding)
        else:
            size = pool_out(size, layer.kernel, layer.stride, layer.padding,
                            model.ceil_mode and layer.layer == "maxpool")
        out.append(FeatureMap(layer.name, layer.layer, channels, size))
    for stage_index, stage in enumerate(model.stages):
        for name, widths in stage.modules.items():
            channels = sum(model.width(w) for w in (widths.n1x1, widths.n3x3, widths.n5x5,
                                                    widths.pool_proj))
            out.append(FeatureMap(name, "inception", channels, size))
        if stage.pool is not None:
            size = apply_pool(stage.pool, size, model.ceil_mode)
            out.append(FeatureMap(stage_pool_name(model, stage_index), f"{stage.pool.type}pool",
                                  channels, size))
    out.append(FeatureMap("head_pool", f"{model.head.pool.type}pool", channels,
                          apply_pool(model.head.pool, size, False)))
    return out


def stage_pool_name(model: ModelSpec, stage_index: int) -> str:
    """Name of the pool that ends a stage: after module 3b it is 'pool3', as in Table 1's order."""
    last = list(model.stages[stage_index].modules)[-1]
    digits = "".join(ch for ch in last if ch.isdigit()) or str(stage_index)
    return f"pool{digits}"


def smallest_input_size(model: ModelSpec, limit: int = 1024) -> int | None:
    """The smallest square input for which every feature map stays at least 1x1."""
    for size in range(1, limit + 1):
        if geometry_problem(model, size) is None:
            return size
    return None


def geometry_problem(model: ModelSpec, input_size: int) -> str | None:
    """Why ``input_size`` is too small for ``model`` (a vanishing map, a pool wider than its
    input), or None when every layer fits."""
    shapes = trace_shapes(model, input_size)
    for fm in shapes:
        if fm.size < 1:
            return f"the feature map vanishes at {fm.name}"
    by_name = {fm.name: fm for fm in shapes}
    pool = model.aux.pool
    for name in model.aux.after:
        fm = by_name.get(name)
        if fm is not None and pool.output_size is None:
            assert pool.kernel is not None
            if pool.kernel > fm.size + 2 * pool.padding:
                return f"the aux pool ({pool.kernel}x{pool.kernel}) is larger than the " \
                       f"{fm.size}x{fm.size} map after {name}"
    head = model.head.pool
    if head.output_size is None and head.kernel is not None:
        last = [fm for fm in shapes if fm.name != "head_pool"][-1]
        if head.kernel > last.size + 2 * head.padding:
            return f"the head pool ({head.kernel}x{head.kernel}) is larger than the " \
                   f"{last.size}x{last.size} final map"
    return None
