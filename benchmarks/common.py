"""Shared helpers for the benchmarks: timing, peak memory, the results table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from inceptionctl.speed import busy_note, machine_info, percentile, time_calls


def seconds_per_call(step: Callable[[], Any], warmup: int, iters: int,
                     device: torch.device = torch.device("cpu")) -> float:
    """Median seconds of ``step`` (synchronised on CUDA), with inceptionctl's own timer."""
    return percentile(time_calls(step, device, warmup, iters, None), 50)


@dataclass
class Goal:
    name: str
    measured: float | None
    target: float
    unit: str = "x"
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # kept in bench.json only

    @property
    def ok(self) -> bool | None:
        return None if self.measured is None else self.measured >= self.target


def report(goals: list[Goal], out: Path, busy: float | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="inceptionctl benchmarks")
    for col in ("goal", "measured", "target", "ok", "details"):
        table.add_column(col)
    for g in goals:
        measured = "-" if g.measured is None else f"{g.measured:.2f}{g.unit}"
        ok = "n/a" if g.ok is None else ("yes" if g.ok else "NO")
        details = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in g.details.items())
        table.add_row(g.name, measured, f">= {g.target:g}{g.unit}", ok,
                      (details + (f"; {g.note}" if g.note else "")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_info(device, {}, busy)
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["cpu_flags"].items())
    console = Console(width=200)
    console.print(f"machine: {machine['cpu_id']} ({machine['threads']} threads; {flags}; oneDNN "
                  f"bf16 {'yes' if machine['cpu_bf16'] else 'no'})"
                  + (f"; GPU {machine['gpu']}" if machine["gpu"] else ""), highlight=False)
    warning = busy_note(busy)
    if warning:
        console.print(f"warning: {warning}", highlight=False)
    for g in goals:
        if "decision" in g.extra:
            console.print(f"{g.name}: {g.extra['decision']}", highlight=False)
    console.print(table)
    data = {"machine": machine, "goals": [dict(asdict(g), ok=g.ok) for g in goals]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0 if all(g.ok is not False for g in goals) else 1


def realistic_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-initialise weights the way trained networks look (Kaiming convs), in place.

    The tiny trunc-normal(0.01) init of torchvision's GoogLeNet shrinks activations layer by
    layer into denormal floats, which run many times slower on x86 and would make every timing
    depend on the init rather than on the code. Both sides of every comparison get this init.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
                m.bias.zero_()
    return model
