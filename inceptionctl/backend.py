"""The inference Backend interface and the registry that discovers backend plugins.

A backend is a plugin registered under the entry-point group ``inceptionctl.backends`` (the
built-in torch, onnxruntime and tensorrt backends are declared in pyproject.toml exactly as a
third-party package declares its own). The core never imports onnxruntime or tensorrt: a plugin
imports its heavy package lazily, inside ``availability`` and ``open``, so listing backends and
``--help`` work without it.

Lifecycle (as Polygraphy's runners): ``backend.open(artifact) -> Session``; ``session.run(batch)``
returns logits; ``session.close()`` (or use the session as a context manager). ``run`` checks the
batch's rank, dtype, channels, spatial size and batch range against the artifact and names what
is wrong.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from .errors import InceptionError

GROUP = "inceptionctl.backends"


class BackendUnavailable(InceptionError):
    """The backend cannot run here (package missing, no CUDA device, ...)."""


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here, and if not why and how to fix it."""

    available: bool
    reason: str = ""
    version: str | None = None
    devices: tuple[str, ...] = ()


@dataclass
class ArtifactInfo:
    """What an opened artifact says about itself: enough to preprocess inputs and name outputs."""

    path: str
    kind: str                      # checkpoint | foreign | onnx | engine
    recipe: dict[str, Any]
    classes: list[str]
    preprocessing: dict[str, Any]  # input_size, resize, mean, std, interpolation, eval_size, ...
    precision: str = "fp32"
    batch_range: tuple[int, int] | None = None  # (min, max) when the artifact fixes one
    input_dtype: torch.dtype = torch.float32
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.preprocessing.get("channels", 3))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Session(ABC):
    """An artifact loaded for inference on one device."""

    info: ArtifactInfo
    device: str = "cpu"

    def check_input(self, batch: torch.Tensor, spatial: int | None) -> None:
        """Raise InceptionError naming what is wrong with ``batch`` for this artifact."""
        where = f"{self.info.path}"
        if not isinstance(batch, torch.Tensor):
            raise InceptionError(f"{where}: input must be a tensor, got {type(batch).__name__}")
        if batch.ndim != 4:
            raise InceptionError(f"{where}: input must be [N, C, H, W], got shape "
                                 f"{list(batch.shape)}")
        if batch.dtype != self.info.input_dtype:
            raise InceptionError(f"{where}: input dtype must be {self.info.input_dtype}, got "
                                 f"{batch.dtype}")
        if batch.shape[1] != self.info.channels:
            raise InceptionError(f"{where}: input must have {self.info.channels} channels, got "
                                 f"{batch.shape[1]}")
        if spatial is not None and tuple(batch.shape[2:]) != (spatial, spatial):
            raise InceptionError(f"{where}: input must be {spatial}x{spatial}, got "
                                 f"{batch.shape[2]}x{batch.shape[3]}")
        if batch.shape[0] < 1:
            raise InceptionError(f"{where}: empty batch")
        if self.info.batch_range is not None:
            lo, hi = self.info.batch_range
            if not lo <= batch.shape[0] <= hi:
                raise InceptionError(f"{where}: batch {batch.shape[0]} is outside the "
                                     f"artifact's range {lo}..{hi}")

    @abstractmethod
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` (float32, CPU) for a preprocessed batch ``[N, C, H, W]``."""

    def close(self) -> None:
        """Release what the session holds (memory, engines)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Backend(ABC):
    """A plugin: can it run here, which artifacts it opens, and how."""

    name: str = ""
    package: str = ""            # the Python package it needs ("" if none beyond torch)
    install_hint: str = ""
    suffixes: tuple[str, ...] = ()

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here (imports its package lazily)."""

    def can_open(self, path: Path) -> bool:
        return path.suffix.lower() in self.suffixes

    @abstractmethod
    def open(self, path: Path, device: str = "cpu", **options: Any) -> Session:
        """Load ``path`` for inference on ``device``."""

    def require(self) -> Availability:
        """Availability, or a BackendUnavailable error with the reason and the install hint."""
        av = self.availability()
        if not av.available:
            hint = f" ({self.install_hint})" if self.install_hint and "pip install" not in \
                av.reason else ""
            raise BackendUnavailable(f"backend '{self.name}' is not available: {av.reason}{hint}")
        return av


# ------------------------------------------------------------------------------------ registry

def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def backend_names() -> list[str]:
    """Registered backend names, built-ins first in a fixed order, then the others sorted."""
    names = list(_entry_points())
    order = ["torch", "onnxruntime", "tensorrt"]
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an error with a hint when there is none."""
    eps = _entry_points()
    if name not in eps:
        names = backend_names()
        hint = difflib.get_close_matches(name, names, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else f" (registered: {', '.join(names)})"
        raise InceptionError(f"unknown backend '{name}'{extra}")
    try:
        obj = eps[name].load()
    except Exception as exc:  # a broken third-party plugin must not take the tool down
        raise InceptionError(f"backend '{name}' failed to load from {eps[name].value}: "
                             f"{exc}") from None
    backend = obj() if isinstance(obj, type) else obj
    if not isinstance(backend, Backend):
        raise InceptionError(f"backend '{name}' ({eps[name].value}) is not an "
                             f"inceptionctl.backend.Backend")
    if not backend.name:
        backend.name = name
    return backend


def resolve_artifact(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else last); anything else must exist."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise InceptionError(f"{p}: a folder without best.pt or last.pt (not a run folder)")
    if not p.exists():
        raise InceptionError(f"{p}: no such file")
    return p


def backend_for(path: Path, forced: str | None = None) -> Backend:
    """The backend named by ``forced``, else the first registered one that opens ``path``."""
    if forced:
        backend = get_backend(forced)
        if not backend.can_open(path):
            raise InceptionError(f"{path}: backend '{forced}' does not open "
                                 f"{path.suffix or 'this kind of'} files "
                                 f"(it opens {', '.join(backend.suffixes)})")
        return backend
    for name in backend_names():
        try:
            backend = get_backend(name)
        except InceptionError:
            continue
        if backend.can_open(path):
            return backend
    raise InceptionError(f"{path}: no backend opens {path.suffix or 'files without a suffix'} "
                         f"(checkpoints .pt/.pth, ONNX .onnx, TensorRT .engine)")


def open_artifact(path: str | Path, backend: str | None = None, device: str = "cpu",
                  **options: Any) -> Session:
    """Open an artifact (run folder, checkpoint, .onnx, engine) with the right backend."""
    p = resolve_artifact(path)
    chosen = backend_for(p, backend)
    chosen.require()
    return chosen.open(p, device=device, **options)
