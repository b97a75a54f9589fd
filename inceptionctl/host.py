"""The host process: choices that belong to the executable, not the library.

Nothing here imports torch, so ``inceptionctl --version`` and ``--help`` stay quick.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt (malloc.h)


def _mallopt() -> Any:
    """glibc's ``mallopt``, typed; None where the C library has none."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Keep the memory that training frees between steps inside the process (glibc on Linux).

    glibc serves every allocation above 32 MiB with its own ``mmap`` and unmaps it when freed,
    so each step of a CPU training run faults the pages of its largest activations in again
    (``googlenet`` at batch 16 holds 38 MiB tensors). With ``mmap`` off and trimming at 2 GiB,
    freed blocks are reused: on a 2-core AMD EPYC a fp32 ``googlenet`` step ran 1.4x faster, a
    bf16 one 1.15x, the default digits run 1.09x. PyTorch's own CPU launcher
    (``torch.backends.xeon.run_cpu``) gets the same from jemalloc or tcmalloc. Nothing is changed
    where the user chose an allocator (``LD_PRELOAD``, a ``MALLOC_*`` variable) or sets
    ``INCEPTIONCTL_KEEP_FREED_MEMORY=0``; returns whether the setting was applied.
    """
    env = os.environ
    if env.get("INCEPTIONCTL_KEEP_FREED_MEMORY", "1") == "0" or "LD_PRELOAD" in env \
            or any(k.startswith("MALLOC_") for k in env) or not sys.platform.startswith("linux"):
        return False
    mallopt = _mallopt()
    return mallopt is not None and mallopt(_M_MMAP_MAX, 0) == 1 \
        and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def keep_freed_memory_in_worker() -> None:
    """Have glibc keep a DataLoader worker's freed memory for reuse (its memory is its own).

    An image's decode, crop and augmentation allocate and free several MB; by default glibc
    returns much of it, and taking it again costs over a hundred page faults per image, about a
    sixth of a worker's time. A no-op where the C library has no ``mallopt``.
    """
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 16 << 20)  # setting both also stops glibc's own adjusting
        mallopt(_M_TRIM_THRESHOLD, 128 << 20)
