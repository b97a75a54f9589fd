"""Counting a recipe's cost: parameters and multiply-adds, from the built model itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .recipe import Recipe


@dataclass(frozen=True)
class Cost:
    params: int            # inference parameters (no aux heads)
    params_with_aux: int   # everything training updates
    macs: int              # multiply-adds of one forward pass at ``input_size`` (no aux heads)
    input_size: int


def count_cost(recipe: Recipe, input_size: int | None = None) -> Cost:
    """Parameters and multiply-adds of the model ``recipe`` builds, counted on the meta device.

    Multiply-adds are torch's FLOP counter (convolutions and matmuls) divided by two; pooling,
    LRN, ReLU and batch norm are not multiply-adds and are not counted, as in the paper (our LRN
    runs its channel window as a 1x1 convolution, which the counter sees and we subtract).
    """
    from .model import LocalResponseNorm, build_model

    size = input_size or recipe.data.input_size
    with torch.device("meta"):
        model = build_model(recipe).eval()
        x = torch.empty(1, recipe.model.in_channels, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    per_module = counter.get_flop_counts()
    lrn = {f"{type(model).__name__}.{name}" for name, m in model.named_modules()
           if isinstance(m, LocalResponseNorm)}
    lrn_flops = sum(sum(per_module.get(name, {}).values()) for name in lrn)
    return Cost(model.num_params(), model.num_params(include_aux=True),
                (counter.get_total_flops() - lrn_flops) // 2, size)
