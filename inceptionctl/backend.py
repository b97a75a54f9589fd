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

Capabilities: the core asks a backend what it can do, never which one it is.

- ``precisions``: what its sessions run (``profile --time`` times exactly these);
  ``builds``: the precisions of the artifacts it makes from an fp32 ONNX (``export --to NAME``).
- :meth:`Backend.make_artifact`: the file it times for a precision, made from a checkpoint with
  what the core hands it in a :class:`BuildContext` (the fp32 ONNX, calibration images, an INT8
  QDQ ONNX of a flavour); the default covers a backend that opens checkpoints or builds engines.
- Optional protocols (``typing.Protocol``, ``runtime_checkable``: a plugin implements the methods
  and attributes, no base class needed; the registry tests them with ``isinstance``):
  :class:`Quantizer` (static INT8 QDQ of an ONNX, in the ``flavours`` it names) and
  :class:`EngineBuilder` (an engine from an ONNX: ``export --to NAME`` for any plugin with one).
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .artifact import resolve_artifact, resolve_with_recipe
from .errors import InceptionError, one_line

__all__ = ["GROUP", "ArtifactInfo", "Availability", "Backend", "BackendUnavailable",
           "BuildContext", "EngineBuilder", "Quantizer", "Session", "backend_for",
           "check_recipe_used",
           "backend_for_suffix", "backend_names", "engine_builders", "get_backend",
           "loadable_backends", "open_artifact", "quantizer", "resolve_artifact"]

GROUP = "inceptionctl.backends"
DEFAULT_RANK = 100  # where a plugin that declares no rank lists (and is tried for a suffix)


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
    kind: str                      # an artifact.Kind value: checkpoint | foreign | onnx | engine
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
    #: Precisions the session can switch between after opening (autocast over one set of
    #: weights); empty when it runs in the precision its artifact was built in.
    switchable: tuple[str, ...] = ()

    def set_precision(self, precision: str) -> None:
        """Run in ``precision`` (one of :attr:`switchable`) from the next batch on."""
        if precision not in self.switchable:
            raise InceptionError(f"{self.info.path}: runs in {self.info.precision} only (asked "
                                 f"for {precision})")
        self.info.precision = precision

    def check_input(self, batch: torch.Tensor, spatial: int | None,
                    dtype: torch.dtype | None = None) -> None:
        """Raise InceptionError naming what is wrong with ``batch`` for this artifact (of
        ``dtype``: the artifact's input dtype unless named)."""
        where = f"{self.info.path}"
        if not isinstance(batch, torch.Tensor):
            raise InceptionError(f"{where}: input must be a tensor, got {type(batch).__name__}")
        if batch.ndim != 4:
            raise InceptionError(f"{where}: input must be [N, C, H, W], got shape "
                                 f"{list(batch.shape)}")
        dtype = self.info.input_dtype if dtype is None else dtype
        if batch.dtype != dtype:
            raise InceptionError(f"{where}: input dtype must be {dtype}, got "
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

    def run_crops(self, crops: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
        """Logits for uint8 crops ``[N, C, H, W]``: normalised with ``mean`` / ``std``, then
        :meth:`run`. A session on an accelerator may override it to send the uint8 crops (a
        quarter of the bytes) and normalise on the device, with the same arithmetic."""
        from inceptionctl.crops import normalize

        return self.run(normalize(crops, mean, std))

    def submit_crops(self, crops: torch.Tensor, mean: Any, std: Any
                     ) -> Callable[[], torch.Tensor]:
        """:meth:`run_crops` started, its logits returned by the callable. A session on an
        accelerator may return before the device is done, so that the caller prepares the next
        batch (and sends it) while this one computes; here it computes at once."""
        logits = self.run_crops(crops, mean, std)
        return lambda: logits

    def close(self) -> None:
        """Release what the session holds (memory, engines)."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class BuildContext:
    """What the core hands a backend that makes an artifact from a checkpoint: where to write,
    the batch range, and the inputs it may need, each made on first use (so a backend asks only
    for what it needs, and never imports a command module to get it)."""

    workdir: Path
    batch: tuple[int, int, int]                   # (min, opt, max)
    onnx: Callable[[], Path]                      # the fp32 ONNX, with our metadata
    calibration: Callable[[], list[torch.Tensor]]  # preprocessed INT8 calibration batches
    quantized: Callable[[str], Path]              # the INT8 QDQ ONNX of a flavour
    device: str = "cpu"
    log: Callable[[str], Any] = lambda _msg: None


@runtime_checkable
class Quantizer(Protocol):
    """Static INT8 quantization (QDQ) of an fp32 ONNX, in the ``flavours`` it names (e.g. one
    fastest on a CPU runtime, one symmetric as an engine builder needs)."""

    flavours: tuple[str, ...]

    def quantize_int8(self, fp32_path: str | Path, out_path: str | Path,
                      calib_batches: Sequence[torch.Tensor], flavour: str = ...,
                      method: str = ..., metadata: dict[str, str] | None = None,
                      log: Callable[[str], Any] | None = None) -> dict[str, Any]:
        """Write ``out_path`` (atomically, metadata copied and updated with ``metadata``);
        returns the settings used."""


@runtime_checkable
class EngineBuilder(Protocol):
    """Builds an engine (a file this backend opens) from an ONNX, in the precisions of
    ``builds``. ``int8_flavour`` names the QDQ flavour its INT8 builds start from (the core
    quantizes with a :class:`Quantizer`), or None when it calibrates on the batches itself."""

    builds: tuple[str, ...]
    int8_flavour: str | None

    def build_engine(self, onnx_path: str | Path, out: str | Path, precision: str,
                     batch: tuple[int, int, int], calib_batches: Sequence[torch.Tensor] | None,
                     log: Callable[[str], Any], *, device: str, **options: Any) -> Path:
        """Build ``out`` from ``onnx_path`` (with whatever it keeps beside it); returns ``out``.

        ``options`` are what ``export`` was given for engines: ``timing_cache`` (a path),
        ``tf32`` and ``verbose`` (booleans); a builder ignores what it does not know."""


class Backend(ABC):
    """A plugin: can it run here, which artifacts it opens, and how."""

    name: str = ""
    package: str = ""            # the Python package it needs ("" if none beyond torch)
    install_hint: str = ""
    suffixes: tuple[str, ...] = ()
    rank: int = DEFAULT_RANK                 # lower lists first and is tried first for a file
    precisions: tuple[str, ...] = ("fp32",)  # what its sessions run
    builds: tuple[str, ...] = ()             # precisions of the artifacts it makes from an ONNX

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here (imports its package lazily)."""

    def can_open(self, path: Path) -> bool:
        return path.suffix.lower() in self.suffixes

    @abstractmethod
    def open(self, path: Path, device: str = "cpu", **options: Any) -> Session:
        """Load ``path`` for inference on ``device``."""

    def make_artifact(self, checkpoint: Path, precision: str, ctx: BuildContext
                      ) -> tuple[Path, dict[str, Any]]:
        """The file this backend times at ``precision``, made from ``checkpoint`` (in
        ``ctx.workdir``), and the options to open it with.

        By default a backend that opens checkpoints times the checkpoint itself, and an
        :class:`EngineBuilder` builds an engine from the checkpoint's ONNX (INT8: from the QDQ
        ONNX of its flavour, or calibrating on ``ctx.calibration()``).
        """
        if self.can_open(checkpoint):
            return checkpoint, {"precision": precision}
        if isinstance(self, EngineBuilder) and self.suffixes:
            int8 = precision == "int8"
            source = ctx.quantized(self.int8_flavour) if int8 and self.int8_flavour \
                else ctx.onnx()
            calib = ctx.calibration() if int8 and not self.int8_flavour else None
            out = ctx.workdir / f"model.{precision}{self.suffixes[0]}"
            if not out.exists():
                self.build_engine(source, out, precision, ctx.batch, calib, ctx.log,
                                  device=ctx.device)
            return out, {}
        raise InceptionError(f"backend '{self.name}' makes no artifact from a checkpoint (it "
                             f"opens {', '.join(self.suffixes) or 'nothing'}); give it a "
                             f"make_artifact or an EngineBuilder's build_engine")

    def matmul_rates(self, device: str) -> dict[str, float]:
        """This backend's own square matrix-multiply rates on ``device`` (``"cpu"`` or
        ``"cuda"``), G(FL)OP/s per precision (2 per multiply-add), where it multiplies with a
        library of its own rather than torch's: ``profile --time`` reads every row against the
        fastest multiply measured. ``{}`` by default, and where the backend cannot run here."""
        return {}

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
    """Registered backend names by each backend's ``rank`` (the built-ins declare theirs), then
    by name; a plugin that fails to load comes last (``get_backend`` names its error)."""
    eps = _entry_points()

    def rank(name: str) -> tuple[float, str]:
        try:
            obj = eps[name].load()
        except Exception:  # a broken plugin still lists, last
            return math.inf, name
        return float(getattr(obj, "rank", DEFAULT_RANK)), name

    return sorted(eps, key=rank)


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
    if not eps[name].value.startswith("inceptionctl."):
        _guard(backend, eps[name].value)
    return backend


def _guard(backend: Backend, where: str) -> None:
    """A third-party backend whose ``availability`` or ``open`` raises is unavailable, or one
    line naming it, instead of taking the command down with its traceback."""
    if getattr(backend, "_inceptionctl_guarded", False):  # an instance registered once, got again
        return
    availability, open_ = backend.availability, backend.open

    def guarded_availability() -> Availability:
        try:
            return availability()
        except Exception as exc:
            return Availability(False, f"availability() failed in {where}: {one_line(exc)}")

    def guarded_open(*args: Any, **kwargs: Any) -> Any:
        try:
            return open_(*args, **kwargs)
        except InceptionError:
            raise
        except Exception as exc:
            raise InceptionError(f"backend '{backend.name}' ({where}) failed to open "
                                 f"{args[0] if args else kwargs.get('path', '')}: "
                                 f"{one_line(exc)}") from None

    backend.availability = guarded_availability  # type: ignore[method-assign]
    backend.open = guarded_open  # type: ignore[method-assign]
    backend._inceptionctl_guarded = True  # type: ignore[attr-defined]


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


def backend_for_suffix(suffix: str) -> Backend:
    """The first registered backend that opens files ending in ``suffix`` (e.g. ``.onnx``)."""
    return backend_for(Path(f"model{suffix}"))


def loadable_backends() -> list[Backend]:
    """Every registered backend that loads, in :func:`backend_names` order (a broken plugin is
    left out here; ``get_backend`` names its error)."""
    out = []
    for name in backend_names():
        try:
            out.append(get_backend(name))
        except InceptionError:
            continue
    return out


def engine_builders() -> dict[str, Backend]:
    """Backends that build engines from an ONNX (:class:`EngineBuilder`), by name."""
    return {b.name: b for b in loadable_backends() if isinstance(b, EngineBuilder)}


def quantizer(flavour: str | None = None) -> Backend:
    """The first registered :class:`Quantizer` (offering ``flavour`` when one is named)."""
    found = [b for b in loadable_backends() if isinstance(b, Quantizer)]
    for b in found:
        if flavour is None or flavour in b.flavours:
            return b
    offered = sorted({f for b in found for f in b.flavours})
    what = f"the INT8 flavour '{flavour}'" if flavour else "INT8 (QDQ) quantization"
    raise InceptionError(f"no registered backend offers {what}"
                         + (f" (flavours offered: {', '.join(offered)})" if offered else
                            " (none of the installed backends quantizes ONNX)"))


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with its last row repeated until it has ``rows`` rows (at least its own)."""
    if rows <= len(x):
        return x
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


def submit_in_range(session: Session, crops: torch.Tensor, mean: Any, std: Any
                    ) -> Callable[[], torch.Tensor]:
    """:meth:`Session.submit_crops` for a batch smaller than the artifact's smallest (the last
    of an eval, on an ONNX file or engine exported for one batch size): padded with copies of
    its last crop, the padding's logits dropped."""
    lo = session.info.batch_range[0] if session.info.batch_range else 1
    n = len(crops)
    if n >= lo:
        return session.submit_crops(crops, mean, std)
    handle = session.submit_crops(pad_rows(crops, lo).contiguous(), mean, std)
    return lambda: handle()[:n]


def run_in_range(session: Session, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` (any number of rows) through ``session``: in chunks of at most the
    artifact's largest batch, a short last one padded to its smallest."""
    lo, hi = session.info.batch_range or (1, max(1, len(x)))
    outs = []
    for part in torch.split(x, max(1, hi)):
        n = len(part)
        outs.append(session.run(pad_rows(part, lo).contiguous())[:n])
    return torch.cat(outs)


def open_artifact(path: str | Path, backend: str | None = None, device: str = "cpu",
                  **options: Any) -> Session:
    """Open an artifact (run folder, checkpoint, .onnx, engine, torchvision:NAME) with the
    right backend; ``recipe`` (in ``options``) names what a foreign artifact lacks."""
    p, recipe = resolve_with_recipe(path, options.pop("recipe", None))
    if recipe is not None:
        options["recipe"] = recipe
    chosen = backend_for(p, backend)
    try:
        chosen.require()
    except BackendUnavailable as exc:  # which of the files given needs it
        raise BackendUnavailable(f"{p}: {exc}") from None
    return chosen.open(p, device=device, **options)


def check_recipe_used(sessions: list[Session], paths: list[Any], recipe: Any) -> None:
    """A ``--recipe`` that none of the artifacts given used is an error: ours carry their own
    recipe (and ignore one given), so it would change nothing. A session that does not say
    (``extra["recipe_used"]``, a third-party backend's) counts as using it."""
    if recipe is None or not sessions:
        return
    if all(s.info.extra.get("recipe_used", True) is False for s in sessions):
        from .checkpoint import RECIPE_NOT_USED

        raise InceptionError(RECIPE_NOT_USED.format(path=", ".join(map(str, paths))))
