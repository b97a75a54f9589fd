"""Device and precision resolution: the one place that turns ``--device`` / ``--precision`` into
a ``torch.device`` and an autocast mode.

Device names are ``auto`` (the first CUDA device when there is one, else the CPU; under torchrun
the process's local rank), ``cpu``, ``cuda`` or ``cuda:N``. Precisions are ``fp32`` or autocast
``bf16`` / ``fp16``; ``auto`` is resolved here.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InceptionError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def parse_device(name: str | None) -> tuple[str, int | None]:
    """``(kind, index)`` for a device name, checked only for spelling (no CUDA query).

    ``auto`` and ``""`` give ``("auto", None)``; ``cuda:1`` gives ``("cuda", 1)``.
    """
    text = (name or "auto").strip().lower()
    if text == "auto":
        return "auto", None
    m = _DEVICE.fullmatch(text)
    if not m:
        raise InceptionError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``name``; an error naming the device when it is not here."""
    kind, index = parse_device(name)
    if kind == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() \
            else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InceptionError(f"--device {name}: no CUDA device is available here")
    if index is not None and index >= torch.cuda.device_count():
        raise InceptionError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                             f"device(s)")
    # A bare ``cuda`` is this process's GPU (its local rank), with the index spelled out:
    # torch.cuda.set_device and the CUDA RNG calls refuse a device without one.
    return torch.device("cuda", local_rank if index is None else index)


def cuda_index(name: str | None, runner: str = "this backend") -> int:
    """The CUDA ordinal a device name means for a CUDA-only backend (``auto``/``cpu`` -> 0)."""
    try:
        return parse_device(name)[1] or 0
    except InceptionError:
        raise InceptionError(f"--device {name}: {runner} runs on CUDA devices: cuda or "
                             f"cuda:N") from None


def cpu_bf16_supported() -> bool:
    """Whether oneDNN here runs bf16 natively (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32, bf16 or fp16 autocast; ``auto`` picks bf16 where the hardware has it."""
    if name not in PRECISIONS:
        raise InceptionError(f"--precision {name}: expected auto, fp32, bf16 or fp16")
    if device.type == "cpu":
        if name == "fp16":
            raise InceptionError("--precision fp16: needs a CUDA device; on CPU use bf16 or fp32")
        if name == "auto":
            return "bf16" if cpu_bf16_supported() else "fp32"
        return name
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision (None for fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------ measured choice of precision
#
# Whether bf16 pays depends on the machine: on a CPU with fast bf16 matmuls (AMX, or AVX512-BF16
# on some AMD EPYC) it trains ~1.5x faster than fp32; on an Intel Xeon with AVX512-BF16 but no
# AMX it is ~25% slower. So ``auto`` is decided by timing a few steps of the real work in each
# candidate, on the machine where it runs, and the decision is cached per machine (the CPU's
# identity, not just its name: see machine_id), thread count, torch version, recipe, batch and
# mode.

PROBE_FORMAT = 2  # 2: keyed by the CPU's family, model, stepping and flags, not its name alone
PREFER_FP32_WITHIN = 0.05  # a lower precision must be >5% faster to give up fp32's exactness
CLEAR_LEAD = 0.15  # a first round whose fastest leads the next by more is not measured again


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses, and why: ``explicit``, ``only`` (one candidate), ``probe``
    (measured now), ``probe, busy`` (measured now while other processes kept the CPUs busy, so
    not cached), ``cache`` (measured before on this machine) or ``resume`` (the run's own)."""

    precision: str
    source: str
    rates: dict[str, float] = field(default_factory=dict)  # img/s per candidate, when measured
    key: str = ""

    @property
    def measured(self) -> bool:
        """Whether rates back the choice (measured now or before)."""
        return self.source in ("probe", "probe, busy", "cache")

    @property
    def automatic(self) -> bool:
        """Whether ``auto`` made the choice (measured, or the one candidate), so its line is
        worth a log: an explicit or resumed precision is the user's own."""
        return self.measured or self.source == "only"

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "source": self.source,
                "rates": {k: round(v, 2) for k, v in self.rates.items()}, "key": self.key}

    def describe(self) -> str:
        """One line: the choice and the measured rates (for the log)."""
        rates = ", ".join(f"{p} {r:,.1f} img/s" for p, r in self.rates.items())
        how = {"probe": "measured now", "cache": "measured earlier on this machine",
               "probe, busy": "measured now, while other processes kept the CPUs busy: not "
                              "cached"}.get(self.source)
        if self.source == "only":  # a GPU always has fp16 to try: a CPU without bf16
            return (f"precision auto -> {self.precision} (the only candidate: no bf16 on this "
                    "CPU, nothing to measure)")
        if how is None:
            return f"precision {self.precision} ({self.source})"
        return f"precision auto -> {self.precision} ({how}: {rates})"


def candidates(device: torch.device) -> list[str]:
    """What ``auto`` chooses among on ``device``: fp32 first (the tie-winner), then autocast."""
    if device.type == "cpu":
        return ["fp32", "bf16"] if cpu_bf16_supported() else ["fp32"]
    found = ["fp32"]
    if torch.cuda.is_bf16_supported():
        found.append("bf16")
    return found + ["fp16"]


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def machine_name(device: torch.device) -> str:
    """The processor the work runs on: the GPU's name, else the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = _cpuinfo().get("model name")
    return name or platform.processor() or platform.machine() or "unknown cpu"


def machine_id(device: torch.device) -> str:
    """What tells this processor from another in a cached measurement: the CPU's model name,
    family, model and stepping and a digest of its flags; for a GPU, its name and the host CPU's.

    Virtual machines often show a bare model name ("AMD EPYC", "Intel Xeon Processor") for
    several generations of CPU, whose bf16 speed differs; a decision measured on one must not
    be read back on another. A GPU's mixed-precision training speed also depends on the host
    that feeds it (the same GPU model trained a third faster in fp16 on one host than another).
    """
    if device.type == "cuda":
        return f"{machine_name(device)} on {machine_id(torch.device('cpu'))}"
    import hashlib

    info = _cpuinfo()
    flags = " ".join(sorted((info.get("flags") or info.get("features", "")).split()))
    parts = [f"{k} {info[k]}" for k in ("cpu family", "model", "stepping", "cpu implementer",
                                         "cpu part", "cpu variant", "cpu revision") if info.get(k)]
    if flags:
        parts.append("flags " + hashlib.sha256(flags.encode()).hexdigest()[:10])
    ident = machine_name(device)
    return f"{ident} ({', '.join(parts)})" if parts else ident


CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f")


def cpu_features() -> dict[str, bool]:
    """The CPU flags that decide low-precision speed (from /proc/cpuinfo; all False elsewhere)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return {f: f in flags for f in CPU_FLAGS}


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/inceptionctl/precision.json`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inceptionctl" / "precision.json"


def probe_key(device: torch.device, mode: str, recipe: str, batch: int, size: int) -> str:
    return (f"{machine_id(device)} | {torch.get_num_threads()} threads | "
            f"torch {torch.__version__} | {mode} | {recipe} | batch {batch} | {size}px")


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: measure again
        return {}
    if not isinstance(data, dict) or data.get("format") != PROBE_FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, key: str, choice: PrecisionChoice) -> None:
    from .files import write_text_atomic

    entries = _read_cache(path)
    entries[key] = {"precision": choice.precision, "rates": choice.rates,
                    "torch": torch.__version__}
    try:
        write_text_atomic(path, json.dumps({"format": PROBE_FORMAT, "entries": entries},
                                           indent=1, sort_keys=True))
    except (OSError, InceptionError):  # a read-only home, or a folder at its path: the cache
        pass                             # is optional, and costs a new measurement next time


def pick_fastest(rates: dict[str, float]) -> str:
    """The fastest candidate; fp32 unless another is more than 5% faster."""
    best = max(rates, key=lambda p: rates[p])
    if "fp32" in rates and rates[best] <= rates["fp32"] * (1 + PREFER_FP32_WITHIN):
        return "fp32"
    return best


def clear_lead(rates: dict[str, float]) -> bool:
    """Whether the fastest rate leads every other by more than :data:`CLEAR_LEAD`."""
    ordered = sorted(rates.values(), reverse=True)
    return len(ordered) > 1 and ordered[0] > ordered[1] * (1 + CLEAR_LEAD)


def choose_precision(requested: str, device: torch.device, probe: Callable[[str], float], *,
                     key: str, cache: Path | None = None, use_cache: bool = True
                     ) -> PrecisionChoice:
    """The precision to run: an explicit one as given; ``auto`` measured with ``probe``.

    ``probe(precision)`` returns images per second of the real work in that precision. The
    decision is cached under ``key`` in ``cache`` (default :func:`cache_path`).
    """
    if requested != "auto":
        return PrecisionChoice(resolve_precision(requested, device), "explicit", key=key)
    options = candidates(device)
    if len(options) == 1:
        return PrecisionChoice(options[0], "only", key=key)
    path = cache if cache is not None else cache_path()
    if use_cache:
        hit = _read_cache(path).get(key)
        if isinstance(hit, dict) and hit.get("precision") in options:
            rates = {str(k): float(v) for k, v in (hit.get("rates") or {}).items()}
            return PrecisionChoice(hit["precision"], "cache", rates, key)
    rates: dict[str, float] = {}
    ticks, own = cpu_ticks(), os.times()
    # Twice, in turn (a busy moment hurts both alike), unless the first round is decisive: the
    # probe's steps are work the run does not keep, several percent of a short run.
    for order in (options, options[::-1]):
        if rates and clear_lead(rates):
            break
        for p in order:
            rates[p] = max(rates.get(p, 0.0), float(probe(p)))
    rates = {p: rates[p] for p in options}
    busy = others_share(ticks, own)
    # measured while other processes took much of the CPUs, the rates may be anyone's: used
    # for this run, never kept for the next ones
    source = "probe" if busy is None or busy <= BUSY else "probe, busy"
    choice = PrecisionChoice(pick_fastest(rates), source, rates, key)
    if use_cache and source == "probe":
        _write_cache(path, key, choice)
    return choice


BUSY = 0.25  # above this share of the CPUs used by other processes, a timing is not the machine's


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``; None elsewhere."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user and nice
    return total - idle, total


def others_share(before: tuple[int, int] | None, own_before: Any,
                 min_ticks: int = 20) -> float | None:
    """The share of the machine's CPU time that processes other than this one used since
    ``before`` (:func:`cpu_ticks`) and ``own_before`` (``os.times()``); None where unknown or
    where fewer than ``min_ticks`` jiffies passed (too short to judge)."""
    after = cpu_ticks()
    if before is None or after is None or after[1] - before[1] < max(1, min_ticks):
        return None
    now = os.times()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = (now.user + now.system - own_before.user - own_before.system) * hz
    busy = (after[0] - before[0]) - own
    return max(0.0, busy / (after[1] - before[1]))


def time_rate(step: Callable[[], Any], images: int, device: torch.device,
              budget_s: float = 0.25, min_steps: int = 2, warmup: int = 1) -> float:
    """Images per second of ``step`` (``images`` per call): ``warmup`` calls, then at least
    ``min_steps`` timed calls and as many as fit in ``budget_s``."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    done, started = 0, time.perf_counter()
    while done < min_steps or time.perf_counter() - started < budget_s:
        step()
        sync()
        done += 1
    return images * done / (time.perf_counter() - started)


def choose_session_precision(session: Any, requested: str, batch: int,
                             log: Callable[[str], None] | None,
                             ctx: Any = None) -> PrecisionChoice | None:
    """Set ``session``'s precision: ``auto`` measured on this machine at this batch (torch
    backend; the decision is cached per machine), an explicit one as given. A session that runs
    in its artifact's own precision (ONNX, engines) takes ``auto`` or that precision only.
    ``session`` is a :class:`inceptionctl.backend.Session`; ``ctx`` a distributed context, whose
    rank 0 measures and every rank follows."""
    if not session.switchable:
        if requested not in ("auto", session.info.precision):
            raise InceptionError(f"--precision {requested}: {session.info.path} runs in "
                                 f"{session.info.precision} (the precision it was exported in)")
        return None
    device = torch.device(session.device)
    pre = session.info.preprocessing
    size = int(pre["eval_size"])
    probe_batch = max(1, min(batch, 16))  # the real work, kept well under a second
    key = probe_key(device, "infer", str(session.info.recipe.get("name", "?")), batch, size)

    def probe(precision: str) -> float:
        session.set_precision(precision)
        x = torch.randn(probe_batch, session.info.channels, size, size)
        return time_rate(lambda: session.run(x), probe_batch, device, budget_s=0.1)

    choice = None
    if ctx is None or ctx.is_main:
        choice = choose_precision(requested, device, probe, key=key)
    if ctx is not None and ctx.active:
        choice = ctx.broadcast_object(choice)
    assert choice is not None
    session.set_precision(choice.precision)
    session.info.extra["precision_choice"] = choice.to_json()
    if log is not None and choice.automatic:
        log(choice.describe())
    return choice
