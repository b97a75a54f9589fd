"""The timed profile: latency and throughput per backend x precision x batch, against the machine.

``inceptionctl profile --time`` builds (or loads) the model once, asks each backend for the
artifact it times (``Backend.make_artifact``: the checkpoint itself, an ONNX file, an engine) in a
temporary folder, handing it the fp32 ONNX, calibration images and INT8 QDQ ONNX on request (a
:class:`~inceptionctl.backend.BuildContext`), opens it through the backend registry and times
``session.run`` on a preloaded batch. A backend is timed in the precisions it declares
(``Backend.precisions``). The machine's limit is the fastest square matrix multiply measured in
the same run, on the same device and precision: torch's (MKL's and oneDNN's) and each profiled
backend's own (``Backend.matmul_rates``: ONNX Runtime's MLAS on the CPU), and on the CPU, for
bf16 and int8, fp32's where that is faster (their products are exact in fp32, so widening them
is one way to multiply them; on a CPU without bf16 kernels, the faster one). Each row reports
its achieved GFLOP/s (2 x counted multiply-adds per image) as a fraction of that limit.

JSON schema (``SpeedReport.to_json()``, version 1)::

    {
      "schema": "inceptionctl.speed/1",
      "recipe": str, "input_size": int, "macs_per_image": int,
      "machine": {"device": str, "cpu": str, "cpu_id": str, "gpu": str | null, "threads": int,
                  "cpu_flags": {str: bool}, "cpu_bf16": bool,
                  "busy_before": float | null,     # others' share of the CPUs before timing
                  "versions": {"inceptionctl": str, "torch": str, "<backend>": str, ...}},
      "peaks": {"<device>/<precision>": G(FL)OP/s, ...},  # the limit (see above); int8: GOP/s
      "rows": [{
        "backend": str, "precision": str, "batch": int, "mode": "inference" | "train",
        "available": bool, "reason": str,           # why not, when unavailable / failed
        "latency_ms": {"p50": float, "p90": float, "p99": float, "mean": float},
        "images_per_s": float,                     # batch / p50 latency
        "gflops": float,                           # achieved: 2 * macs * batch / p50 (train: x3)
        "peak_fraction": float | null,             # gflops / the matching peak
        "peak_memory_mib": float,                  # RSS high-water mark (CPU) or allocator peak (CUDA)
        "iterations": int}, ...]
    }

Unavailable backends get a row with ``available: false`` and the reason, never a crash.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import torch

from .backend import BuildContext, Quantizer
from .data import DataError
from .errors import InceptionError
from .recipe import Recipe
from .runtime import (BUSY, autocast, choose_precision, choose_session_precision, cpu_ticks,
                      others_share, probe_key, resolve_device, time_rate)

SCHEMA = "inceptionctl.speed/1"


@dataclass
class SpeedRow:
    backend: str
    precision: str
    batch: int
    mode: str = "inference"
    available: bool = True
    reason: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0
    gflops: float = 0.0
    peak_fraction: float | None = None
    peak_memory_mib: float = 0.0
    iterations: int = 0


@dataclass
class SpeedReport:
    recipe: str
    input_size: int
    macs_per_image: int
    machine: dict[str, Any]
    peaks: dict[str, float]
    rows: list[SpeedRow]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "recipe": self.recipe, "input_size": self.input_size,
                "macs_per_image": self.macs_per_image, "machine": self.machine,
                "peaks": self.peaks, "rows": [asdict(r) for r in self.rows]}


# ------------------------------------------------------------------------------ measurements

def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(step: Callable[[], Any], device: torch.device, warmup: int, iters: int | None,
               seconds: float | None) -> list[float]:
    """Seconds per call after ``warmup`` calls: ``iters`` calls, or as many as fit ``seconds``."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    out: list[float] = []
    deadline = time.perf_counter() + (seconds or 0.0)
    while True:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            step()
            out.append(time.perf_counter() - t0)
        if iters is not None and len(out) >= iters:
            break
        if iters is None and time.perf_counter() >= deadline and len(out) >= 3:
            break
    return out


def busy_fraction(seconds: float = 0.25) -> float | None:
    """The share of this machine's CPU time that other processes used over ``seconds``, while
    this one sleeps (Linux; None elsewhere). Timings, and the GEMM limit most of all (its
    threads wait at every barrier for a preempted one), mean little when this is high."""
    before, own = cpu_ticks(), os.times()
    if before is None:
        return None
    time.sleep(seconds)
    return others_share(before, own, min_ticks=1)




def busy_note(busy: float | None) -> str | None:
    """The warning for a busy machine, or None."""
    if busy is None or busy <= BUSY:
        return None
    return (f"the machine was busy: other processes used {busy:.0%} of its {os.cpu_count()} "
            "CPUs just before timing, so these rates and the GEMM limit are not the machine's")


def matmul_peak(device: torch.device, precision: str, n: int = 2048, iters: int = 5,
                budget_s: float = 0.25) -> float:
    """G(FL)OP/s of an n x n x n matrix multiply on ``device`` in ``precision`` (the machine's
    limit); 2 operations per multiply-add, as the rows count them.

    On the CPU, torch has two GEMM libraries: ``torch.mm`` calls MKL, and convolutions call
    oneDNN. MKL takes its AVX2 code path on AMD CPUs, so there ``torch.mm`` runs at about half
    the rate oneDNN reaches on the same multiply. The float limit is the faster of the two:
    MKL's ``torch.mm``, and oneDNN's 1x1 convolution of a channels_last ``(1, n, 32, n / 32)``
    input, which is the same product (fp32 only: torch's bf16 ``torch.mm`` is oneDNN's already).
    ``int8`` is an int8 x int8 -> int32 multiply (``torch._int_mm``), so INT8 rows are not read
    against the float limit; 0.0 where torch has no int8 GEMM on ``device``.

    A library without a fast path for ``precision`` here (bf16 on a CPU without it takes about
    a minute for one 2048-cube product) is timed at a size whose product takes about
    ``budget_s``, from a first 512-cube one, so the limit costs seconds, not minutes.
    """
    def candidates(m: int) -> list[Callable[[], Any]]:
        if precision == "int8":
            ai = torch.randint(-128, 128, (m, m), dtype=torch.int8, device=device)
            bi = torch.randint(-128, 128, (m, m), dtype=torch.int8, device=device)
            return [lambda: torch._int_mm(ai, bi)]
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16,
                 "fp16": torch.float16}.get(precision, torch.float32)
        a = torch.randn(m, m, device=device).to(dtype)
        b = torch.randn(m, m, device=device).to(dtype)
        found: list[Callable[[], Any]] = [lambda: torch.mm(a, b)]
        if device.type == "cpu" and dtype == torch.float32 and m % 32 == 0:
            x = a.reshape(1, m, 32, m // 32).contiguous(memory_format=torch.channels_last)
            w = b.reshape(m, m, 1, 1)
            found.append(lambda: torch.nn.functional.conv2d(x, w))
        return found

    small = min(n, 512)
    built: dict[int, list[Callable[[], Any]]] = {}

    def probe(call: Callable[[], Any]) -> float:
        # the fastest of two or three calls (one stall on a shared machine is not a slow
        # library), two where they already took budget_s
        times = [time_calls(call, device, warmup=1, iters=1, seconds=None)[0]]
        while len(times) < 2 or (len(times) < 3 and sum(times) < budget_s):
            times.append(time_calls(call, device, warmup=0, iters=1, seconds=None)[0])
        return min(times)

    try:
        first = [probe(call) for call in built.setdefault(small, candidates(small))]
    except (RuntimeError, NotImplementedError, AttributeError):
        if precision == "int8":
            return 0.0
        raise
    best = 0.0
    for index, seconds in enumerate(first):
        # the size this library multiplies in about budget_s (n at most, 512 at least)
        m = n
        while m > small and seconds * (m / small) ** 3 > budget_s:
            m //= 2
        if m not in built:
            built[m] = candidates(m)
        call = built[m][index]
        t = percentile(time_calls(call, device, warmup=1, iters=iters, seconds=None), 50)
        best = max(best, 2.0 * m ** 3 / t / 1e9)
    return best


def machine_info(device: torch.device, versions: dict[str, str],
                 busy: float | None = None) -> dict[str, Any]:
    """The machine a timing ran on; ``busy``: other processes' share of the CPUs before it."""
    from . import __version__
    from .runtime import cpu_bf16_supported, cpu_features, machine_id, machine_name

    cpu = torch.device("cpu")
    return {"device": str(device), "cpu": machine_name(cpu), "cpu_id": machine_id(cpu),
            "cpu_flags": cpu_features(), "cpu_bf16": cpu_bf16_supported(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(),
            "busy_before": None if busy is None else round(busy, 3),
            "versions": {"inceptionctl": __version__, "torch": torch.__version__, **versions}}


# --------------------------------------------------------------------------- the timed profile

@dataclass
class SpeedOptions:
    recipe: Recipe
    artifact: Path | None = None
    backends: list[str] = field(default_factory=lambda: ["torch"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    device: str = "auto"
    warmup: int = 3
    iters: int | None = 10  # None: time for ``seconds``
    seconds: float | None = None
    train: bool = False
    calib_data: str | None = None  # INT8 calibration images: a folder or digits (the default)
    log: Callable[[str], None] = lambda msg: None


CALIB_IMAGES = 16  # enough for ranges that give int8's speed; speed does not depend on accuracy


def _build_context(ckpt: Path, tmp: Path, batches: list[int], device: torch.device,
                   log: Callable[[str], None], calib_data: str | None = None) -> BuildContext:
    """What a backend may ask for to make its timed artifact, each made once, in ``tmp``: the
    checkpoint's fp32 ONNX, calibration images (``calib_data``, else the embedded digits, said
    on the log) and the INT8 QDQ ONNX of a flavour, by the registry's quantizer for it."""
    from .artifact import int8_props, metadata_props, write_onnx
    from .backend import quantizer
    from .checkpoint import load_with_facts
    from .data import calibration_batches

    batch = (1, max(batches), max(batches))
    made: dict[str, Any] = {}

    def facts() -> Any:
        if "facts" not in made:
            made["facts"] = load_with_facts(ckpt)
        return made["facts"]

    def onnx() -> Path:
        out = tmp / "model.fp32.onnx"
        if not out.exists():
            model, recipe, classes, pre, source = facts()
            write_onnx(model, pre, batch, int(recipe.export.opset),
                       metadata_props(recipe, classes, pre, "fp32", batch, source), out,
                       f"{recipe.name}: timed by inceptionctl profile")
        return out

    def calibration() -> list[torch.Tensor]:
        if "calib" not in made:
            _, _, classes, pre, _ = facts()
            if calib_data is None:
                log(f"int8: calibrating on {CALIB_IMAGES} images of the embedded digits "
                    f"(--calib-data PATH for your own)")
            made["calib"] = calibration_batches(calib_data or "digits", pre, classes,
                                                CALIB_IMAGES, batch=batch[1], log=log)
        return made["calib"]

    def quantized(flavour: str) -> Path:
        out = tmp / f"model.int8-{flavour}.onnx"
        if not out.exists():
            calib = calibration()
            meta = {"flavour": flavour, "calibration_method": "minmax",
                    "calibration_samples": sum(len(b) for b in calib)}
            quant = quantizer(flavour)
            cast(Quantizer, quant).quantize_int8(onnx(), out, calib, flavour, "minmax",
                                                 metadata=int8_props(meta), log=log)
        return out

    return BuildContext(tmp, batch, onnx, calibration, quantized, str(device), log)


def timed_profile(opts: SpeedOptions) -> SpeedReport:
    """Time every backend x precision x batch (and the training step with ``train``)."""
    from .checkpoint import save_checkpoint
    from .model import build_model
    from .profile import count_cost

    for b in opts.batches:
        if b < 1:
            raise InceptionError(f"--batch: {b} is not a positive batch size")
    recipe = opts.recipe
    size = recipe.data.input_size
    macs = count_cost(recipe).macs
    device = resolve_device(opts.device)
    versions: dict[str, str] = {}
    rows: list[SpeedRow] = []
    peaks: dict[str, float] = {}

    own: dict[str, float] | None = None  # the profiled backends' own multiply rates

    def backends_rate(prec: str) -> float:
        from .backend import get_backend

        nonlocal own
        if own is None:  # asked once, on the first row's limit
            own = {}
            for name in dict.fromkeys(opts.backends):
                try:  # {} where the backend cannot run here (Backend.matmul_rates)
                    rates = get_backend(name).matmul_rates(device.type)
                except InceptionError:  # an unknown backend: its row says why
                    rates = {}
                for p, rate in rates.items():
                    own[p] = max(own.get(p, 0.0), rate)
        return own.get(prec, 0.0)

    def peak(prec: str) -> float:
        key = f"{device.type}/{prec}"
        if key not in peaks:
            rate = max(matmul_peak(device, prec), backends_rate(prec))
            if device.type == "cpu" and prec != "fp32":
                rate = max(rate, peak("fp32"))  # widened to fp32, where that is faster
            peaks[key] = rate
        return peaks[key]

    busy = busy_fraction()  # others' share of the CPUs, sampled while this process sleeps
    with tempfile.TemporaryDirectory(prefix="inceptionctl-profile-") as tmpdir:
        tmp = Path(tmpdir)
        if opts.artifact is not None:
            ckpt = opts.artifact
        else:
            ckpt = save_checkpoint(tmp / "model.pt", build_model(recipe), recipe)
        ctx = _build_context(ckpt, tmp, opts.batches, device, opts.log, opts.calib_data)
        for name in opts.backends:
            rows += _time_backend(name, opts, ckpt, ctx, device, macs, peak, versions)
        if not rows:  # none of the backends runs a precision asked for: say so, not an empty table
            rows = [_none_asked(name, opts.precisions) for name in opts.backends]
        if opts.train:
            for prec in [p for p in opts.precisions if p in ("fp32", "bf16", "fp16", "auto")]:
                for batch in opts.batches:
                    rows.append(_train_row(recipe, prec, batch, device, opts, macs, peak))
    return SpeedReport(recipe.name, size, macs, machine_info(device, versions, busy), peaks, rows)


def _time_backend(name: str, opts: SpeedOptions, ckpt: Path, ctx: BuildContext,
                  device: torch.device, macs: int, peak: Callable[[str], float],
                  versions: dict[str, str]) -> list[SpeedRow]:
    """The rows of one backend: each precision it declares that was asked for, every batch;
    a row saying why where it cannot run or make its artifact."""
    from .backend import get_backend, open_artifact

    try:
        backend = get_backend(name)
        av = backend.availability()
    except InceptionError as exc:
        return [SpeedRow(name, "-", 0, available=False, reason=str(exc))]
    if av.version:
        versions[name] = av.version
    rows: list[SpeedRow] = []
    recipe, size = opts.recipe, opts.recipe.data.input_size
    # ``auto``: what eval would run, measured per batch, on backends whose sessions switch
    # precision (torch); the row says the choice, e.g. ``auto:bf16``.
    wanted = [p for p in opts.precisions if p in backend.precisions or
              (p == "auto" and "fp32" in backend.precisions)]
    for prec in wanted:
        if not av.available:
            rows.append(SpeedRow(name, prec, 0, available=False, reason=av.reason))
            continue
        try:
            path, extra = backend.make_artifact(ckpt, "fp32" if prec == "auto" else prec, ctx)
            with open_artifact(path, name, str(device), **extra) as session:
                if prec == "auto" and not session.switchable:
                    continue
                for batch in opts.batches:
                    label = prec
                    if prec == "auto":
                        choice = choose_session_precision(session, "auto", batch, opts.log)
                        label = f"auto:{choice.precision if choice else session.info.precision}"
                    x = torch.randn(batch, recipe.model.in_channels, size, size)
                    # a CUDA graph the probe captured would hide the pass's memory from the peak
                    getattr(session, "release_graphs", lambda: None)()
                    reset_peak_memory(device)
                    opts.log(f"timing {name} {label} batch {batch}")
                    times = time_calls(lambda: session.run(x), device, opts.warmup,
                                       opts.iters, opts.seconds)
                    rows.append(_row(name, label, batch, "inference", times, macs, 1,
                                     peak(session.info.precision), device))
        except DataError:
            raise  # the user's --calib-data, not the backend: an error, not a row
        except InceptionError as exc:
            rows.append(SpeedRow(name, prec, 0, available=False, reason=str(exc)))
    return rows


def _none_asked(name: str, precisions: list[str]) -> SpeedRow:
    """The row of a backend asked for none of the precisions it runs."""
    from .backend import get_backend

    asked = ", ".join(precisions)
    why = (f"{name} runs none of {asked}: its precisions are "
           f"{', '.join(get_backend(name).precisions)}")
    if "auto" in precisions:
        why += " (auto times a backend that switches precision, as torch does)"
    return SpeedRow(name, asked, 0, available=False, reason=why)


def _row(backend: str, precision: str, batch: int, mode: str, times: list[float], macs: int,
         flop_factor: int, peak: float, device: torch.device) -> SpeedRow:
    p50 = percentile(times, 50)
    gflops = 2.0 * macs * batch * flop_factor / p50 / 1e9
    return SpeedRow(backend, precision, batch, mode, True, "",
                    {"p50": 1e3 * p50, "p90": 1e3 * percentile(times, 90),
                     "p99": 1e3 * percentile(times, 99), "mean": 1e3 * sum(times) / len(times)},
                    batch / p50, gflops, gflops / peak if peak else None,
                    peak_memory_mib(device), len(times))


def _train_row(recipe: Recipe, precision: str, batch: int, device: torch.device,
               opts: SpeedOptions, macs: int, peak: Callable[[str], float]) -> SpeedRow:
    """One training step (forward + aux + backward + SGD) as ``inceptionctl train`` runs it."""
    from .data import Batch
    from .model import build_model
    from .trainer import Trainer

    if device.type == "cpu" and precision == "fp16":
        return SpeedRow("torch", precision, batch, "train", False, "fp16 training needs CUDA")
    reset_peak_memory(device)
    model = build_model(recipe).to(device, memory_format=torch.channels_last).train()
    size = recipe.data.input_size
    x = torch.randn(batch, recipe.model.in_channels, size, size, device=device
                    ).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, recipe.model.num_classes, (batch,), device=device)
    data = Batch(x, y, [])
    label = precision
    if precision == "auto":  # what `train` would choose at this batch, measured the same way
        def probe(p: str) -> float:
            trial = Trainer(copy.deepcopy(model), recipe, device, p, ema=False)
            return time_rate(lambda: trial.step(data), batch, device)

        choice = choose_precision("auto", device, probe,
                                  key=probe_key(device, "train", recipe.name, batch, size))
        opts.log(choice.describe())
        precision, label = choice.precision, f"auto:{choice.precision}"
    trainer = Trainer(model, recipe, device, precision, ema=False)

    opts.log(f"timing torch training {label} batch {batch}")
    times = time_calls(lambda: trainer.step(data), device, max(1, opts.warmup), opts.iters,
                       opts.seconds)
    # forward + backward is about 3x the forward's multiply-adds
    return _row("torch", label, batch, "train", times, macs, 3, peak(precision), device)


# ----------------------------------------------------------------------------------- rendering

def render(report: SpeedReport) -> Any:
    from rich.markup import escape
    from rich.table import Table

    m = report.machine
    title = (f"{report.recipe} at {report.input_size}x{report.input_size} on {m['device']} "
             f"({m['gpu'] or m['cpu']}, {m['threads']} threads; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ")")
    table = Table(title=escape(title))
    for col in ("backend", "precision", "mode", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s",
                "GFLOP/s", "of peak", "peak MiB"):
        table.add_column(col, justify="left" if col in ("backend", "precision", "mode") else "right")
    reasons: list[str] = []  # numbered notes under the table, so a reason never widens it
    for r in report.rows:
        if not r.available:
            if r.reason not in reasons:
                reasons.append(r.reason)
            table.add_row(r.backend, r.precision, r.mode, "-",
                          f"unavailable ({reasons.index(r.reason) + 1})", *[""] * 6)
            continue
        lat = r.latency_ms
        table.add_row(r.backend, r.precision, r.mode, str(r.batch), f"{lat['p50']:.1f}",
                      f"{lat['p90']:.1f}", f"{lat['p99']:.1f}", f"{r.images_per_s:,.1f}",
                      f"{r.gflops:,.1f}",
                      "-" if r.peak_fraction is None else f"{r.peak_fraction:.0%}",
                      f"{r.peak_memory_mib:,.0f}")
    peaks = ", ".join(f"{k} {v:,.0f} {'GOP/s' if k.endswith('/int8') else 'GFLOP/s'}"
                      for k, v in report.peaks.items() if v > 0)
    notes = [f"machine limit (GEMM): {peaks}"] if peaks else []
    if any(r.available for r in report.rows):  # what GFLOP/s counts: Table 1's work, no more
        notes.insert(0, f"GFLOP/s: 2 x {report.macs_per_image / 1e9:.3f} G multiply-adds per "
                        f"image as Table 1 counts them (train x3)")
    busy = busy_note(m.get("busy_before"))
    notes += [f"warning: {busy}"] if busy else []
    notes += [f"({i}) {escape(reason)}" for i, reason in enumerate(reasons, 1)]
    table.caption = "\n".join(notes) or None
    return table


def plot(report: SpeedReport, path: Path) -> Path:
    """Throughput vs batch, one line per backend / precision / mode, as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_path
    from .plots import plot_format

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in report.rows:
        if r.available:
            series.setdefault(f"{r.backend} {r.precision} {r.mode}", []).append(
                (r.batch, r.images_per_s))
    for label, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title(f"{report.recipe} {report.input_size}x{report.input_size}, "
                 f"{report.machine['device']}")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=plot_format(path), dpi=100)
    plt.close(fig)
    return path
