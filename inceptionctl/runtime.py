"""Device and precision resolution: the one place that turns ``--device`` / ``--precision`` into
a ``torch.device`` and an autocast mode.

Device names are ``auto`` (the first CUDA device when there is one, else the CPU; under torchrun
the process's local rank), ``cpu``, ``cuda`` or ``cuda:N``. Precisions are ``fp32`` or autocast
``bf16`` / ``fp16``; ``auto`` is resolved here.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
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
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


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
