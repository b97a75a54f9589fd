"""Shared helpers for the benchmarks: timing, peak memory, the results table."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark for this process (Linux), so the next peak is a phase's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(step: Callable[[], Any], warmup: int, iters: int, sync: Callable[[], None] = lambda: None
          ) -> list[float]:
    """Seconds per call of ``step`` over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


@dataclass
class Goal:
    name: str
    measured: float | None
    target: float
    unit: str = "x"
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.measured is None else self.measured >= self.target


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def report(goals: list[Goal], out: Path) -> int:
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
    Console(width=200).print(table)
    data = {"machine": machine(), "goals": [dict(asdict(g), ok=g.ok) for g in goals]}
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
