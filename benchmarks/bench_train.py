"""P3: training img/s of googlenet (+ aux) vs a naive torchvision loop, in the same process.

Both sides: synthetic 224x224 data, the same batch, SGD (momentum 0.9, weight decay), loss =
main + 0.3 x (aux1 + aux2). The naive loop is torchvision's googlenet in fp32 NCHW; ours is the
``googlenet`` recipe's model stepped by ``inceptionctl.trainer.Trainer``, as ``inceptionctl
train`` steps it (the recipe's loss and SGD, channels_last, bf16 autocast where the CPU has it,
fp16/bf16 AMP on CUDA, the non-finite guard), less the Polyak copy, which the naive loop lacks.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from inceptionctl import build_model, load_recipe
from inceptionctl.data import Batch
from inceptionctl.runtime import choose_precision, probe_key, time_rate
from inceptionctl.trainer import Trainer

from inceptionctl.speed import peak_memory_mib, reset_peak_memory

from common import Goal, realistic_, seconds_per_call


def _naive_step(device: torch.device, batch: int):
    model = realistic_(torchvision.models.googlenet(weights=None, aux_logits=True,
                                                    init_weights=False)).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    ce = nn.CrossEntropyLoss()

    def step():
        out = model(x)
        loss = ce(out.logits, y) + 0.3 * (ce(out.aux_logits1, y) + ce(out.aux_logits2, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _our_step(device: torch.device, batch: int, precision: str):
    recipe = load_recipe("googlenet")
    model = realistic_(build_model(recipe)).to(device, memory_format=torch.channels_last)
    model.train()
    trainer = Trainer(model, recipe, device, precision, ema=False)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    data = Batch(x, y, [])
    return lambda: trainer.step(data)


def _choose(device: torch.device, batch: int, precision: str, budget_s: float):
    """``auto`` as ``inceptionctl train`` decides it: each candidate timed on this machine."""
    def probe(p: str) -> float:
        torch.manual_seed(0)
        return time_rate(_our_step(device, batch, p), batch, device, budget_s=budget_s)

    key = probe_key(device, "train", "googlenet", batch, 224)
    return choose_precision(precision, device, probe, key=key, use_cache=False)


def measure(device: torch.device, batch: int = 16, warmup: int = 2, iters: int = 6,
            precision: str = "auto", probe_budget_s: float = 1.0) -> Goal:
    choice = _choose(device, batch, precision, probe_budget_s)
    precision = choice.precision
    rows = {}
    for name, make in (("naive fp32 NCHW", lambda: _naive_step(device, batch)),
                       (f"ours {precision} channels_last", lambda: _our_step(device, batch, precision))):
        torch.manual_seed(0)
        reset_peak_memory(device)
        step = make()
        sec = seconds_per_call(step, warmup, iters, device)
        rows[name] = (batch / sec, peak_memory_mib(device))
        del step
    (base_ips, base_mem), (ours_ips, ours_mem) = rows.values()
    label = "P3 train img/s vs naive" + (" (cuda)" if device.type == "cuda" else "")
    # 1.6x from channels_last and the fused step alone; 2.0x where a lower precision pays
    target = 2.0 if precision != "fp32" else 1.6
    return Goal(label, ours_ips / base_ips, target, details={
        "naive img/s": base_ips, "ours img/s": ours_ips, "naive peak MiB": base_mem,
        "ours peak MiB": ours_mem, "batch": batch, "precision": precision},
        extra={"precision_choice": choice.to_json(), "decision": choice.describe()})
