"""``inceptionctl export``: checkpoint -> ONNX (fp32, fp16, INT8 QDQ) or an engine, parity proven.

The graph is PyTorch's TorchScript-based ONNX exporter's (``torch.onnx.export(dynamo=False)``):
it needs nothing beyond torch and gives a clean, constant-folded graph (BatchNorm folded into
Conv) with a dynamic batch axis; the ``dynamo=True`` exporter needs ``onnxscript``, which is not
a dependency. The model's ``forward`` never runs the aux heads, so the graph has one input
``images`` ``[batch, C, S, S]`` (float32, S the eval crop size) and one output ``logits``
``[batch, num_classes]``. ``onnx.checker`` (full check) runs on every file written, and the file
carries the metadata of :mod:`inceptionctl.artifact` (the key table is there).

Targets (:func:`targets`): ``onnx``, and every registered backend that declares an
:class:`~inceptionctl.backend.EngineBuilder` (``--to NAME`` builds its engine from the fp32 ONNX,
in the precisions it ``builds``). INT8 ONNX comes from a registered
:class:`~inceptionctl.backend.Quantizer`, in one of the flavours it offers; an engine builder
that names an ``int8_flavour`` is handed the QDQ ONNX of that flavour. Nothing here imports a
backend's package: everything is asked of the registry.

Parity is proven on every export, not assumed: the written file is opened through its backend
and run next to the PyTorch model on the same preprocessed images, at the batch sizes of the
declared range (:mod:`inceptionctl.compare` states the criteria). A failed check
keeps the file and raises :class:`ExportCheckFailed` (a ``CheckFailed``, exit code 1) carrying
the full report.

Default output files lie next to the checkpoint and take its stem: ``run/best.pt`` ->
``run/best.onnx``, ``run/best.int8.onnx``, ``run/best.fp16.engine`` (``best.engine`` for fp32;
the first suffix the engine's backend opens).
A run folder means its best checkpoint (else last). Input files are never written to.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .artifact import (ONNX_SUFFIX, int8_props, metadata_props, precision_props,
                       read_onnx_metadata, resolve_artifact, resolve_with_recipe,
                       write_float16_copy, write_onnx)
from .backend import (Backend, EngineBuilder, Quantizer, backend_for_suffix, engine_builders,
                      get_backend, loadable_backends, open_artifact, quantizer)
from .checkpoint import load_with_facts
from .compare import Parity, prove_parity
from .data import calibration_batches, load_samples
from .errors import CheckFailed, InceptionError, one_line, say
from .recipe import OPSETS, Recipe, load_recipe, parse_batch_range
from .runtime import resolve_device

ONNX = "onnx"  # the built-in target: the core writes ONNX itself
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MAX_CHECK_SAMPLES = 512

Log = Callable[[str], Any]


class ExportCheckFailed(CheckFailed):
    """The export was written but its parity check failed; ``report`` has every number."""

    def __init__(self, message: str, report: "ExportReport"):
        super().__init__(message)
        self.report = report


def _stderr(msg: str) -> None:
    say(msg)


def _choice(value: str, allowed: Sequence[str], what: str, extra: str = "") -> str:
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise InceptionError(f"{what} '{value}': expected one of {', '.join(allowed)}{hint}{extra}")


# ------------------------------------------------------------------------------------ report

@dataclass
class ExportReport:
    """What an export wrote and the proof that it computes what the checkpoint computes."""

    file: str
    format: str            # the target: onnx, or the engine builder's name (e.g. tensorrt)
    size_bytes: int
    precision: str
    batch: tuple[int, int, int]
    opset: int
    source: str
    parity: Parity
    seconds: float
    passed: bool
    int8: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "size_bytes": self.size_bytes,
                "precision": self.precision, "batch": "{}:{}:{}".format(*self.batch),
                "opset": self.opset, "source": self.source, "seconds": self.seconds,
                "passed": self.passed, "parity": self.parity.to_json(), "int8": self.int8,
                "notes": self.notes}

    def failure(self) -> str:
        """One line with the numbers of a failed check ('' when it passed)."""
        if self.passed:
            return ""
        p = self.parity
        return (f"{self.file}: parity check failed ({p.criterion}): max |diff| "
                f"{p.max_abs_diff:#.3g} ({p.relative_diff:.2e} of the logit range "
                f"{p.logit_range:.3g}), top-1 agreement {p.top1_agreement:.2f}% on {p.samples} "
                f"samples; the file is kept")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render(report: ExportReport) -> Any:
    """The export summary as a rich Table: file, size, precision, batch range, parity, time."""
    from rich.markup import escape
    from rich.table import Table

    p = report.parity
    ok = "[green]passed[/green]" if report.passed else "[red]FAILED[/red]"
    table = Table(title=f"export -> {report.format} ({ok})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("file", escape(report.file))
    table.add_row("size", _size(report.size_bytes))
    table.add_row("precision", report.precision + (
        f" ({report.int8['flavour']} flavour, {report.int8['calibration_method']}, "
        f"{report.int8['calibration_samples']} calibration images)" if report.int8 else ""))
    table.add_row("batch range", "{}:{}:{}".format(*report.batch) + f"  (opset {report.opset})")
    table.add_row("parity data", f"{escape(p.data)}; batch sizes {', '.join(map(str, p.batch_sizes))}")
    table.add_row("max |diff|", f"{p.max_abs_diff:#.3g}  ({p.relative_diff:.2e} of logit range "
                                f"{p.logit_range:.3g}; mean {p.mean_abs_diff:.3g})")
    table.add_row("top-1 agreement", f"{p.top1_agreement:.2f}%")
    if p.top1_reference is not None:
        table.add_row("top-1 accuracy", f"PyTorch {p.top1_reference:.2f}% -> {report.precision} "
                                        f"{p.top1_exported:.2f}% ({p.top1_delta:+.2f} points)")
    table.add_row("check", f"{p.criterion}: {ok}")
    table.add_row("time", f"{report.seconds:.1f} s")
    for note in report.notes:
        table.add_row("note", escape(note))
    return table


# ------------------------------------------------------------------------ what can be built

def targets() -> list[str]:
    """What ``--to`` accepts: ``onnx``, then every registered backend that builds engines."""
    return [ONNX, *engine_builders()]


def int8_flavours() -> list[str]:
    """The INT8 (QDQ) flavours the registered quantizers offer, in registry order."""
    found = [f for b in _quantizers() for f in cast(Quantizer, b).flavours]
    return list(dict.fromkeys(found))


def precisions(to: str) -> tuple[str, ...]:
    """The precisions ``--to`` ``to`` can be exported in: ONNX is fp32 and fp16 (written by the
    core), plus what the registered quantizers build (int8); an engine, what its builder
    declares in ``builds``."""
    if to == ONNX:
        built = [p for b in _quantizers() for p in b.builds]
        return tuple(dict.fromkeys(["fp32", "fp16", *built]))
    return tuple(_builder(to).builds)


def _quantizers() -> list[Backend]:
    return [b for b in loadable_backends() if isinstance(b, Quantizer)]


def _builder(to: str) -> Backend:
    """The backend that builds ``to``'s engines; an unknown target gets today's 'did you mean'."""
    builders = engine_builders()
    if to not in builders:
        _choice(to, targets(), "--to")
    return builders[to]


def _built_by(precision: str) -> list[str]:
    return [name for name, b in engine_builders().items() if precision in b.builds]


# ------------------------------------------------------------------------------------ export

def default_output(source: Path, to: str, precision: str) -> Path:
    """Next to the checkpoint, named after it: best.onnx, best.int8.onnx, best.fp16.engine;
    weights from the torch hub cache (``torchvision:NAME``) export into the current folder."""
    import torch

    tag = "" if precision == "fp32" or source.stem.endswith(f".{precision}") else f".{precision}"
    folder = source.parent
    if folder.resolve() == (Path(torch.hub.get_dir()) / "checkpoints").resolve():
        folder = Path(".")  # the cache is torch's, not the place for the user's models
    return folder / f"{source.stem}{tag}{_suffixes(to)[0]}"


def _suffixes(to: str) -> tuple[str, ...]:
    return (ONNX_SUFFIX,) if to == ONNX else tuple(get_backend(to).suffixes)


def _output(source: Path, out: str | os.PathLike | None, to: str, precision: str) -> Path:
    path = Path(out) if out is not None else default_output(source, to, precision)
    suffixes = _suffixes(to)
    if path.exists() and path.is_dir():
        raise InceptionError(f"--out {path}: is a folder; give a file name (ending in "
                             f"{' or '.join(suffixes)})")
    if path.suffix.lower() not in suffixes:
        raise InceptionError(f"--out {path}: the {to} file's name must end in "
                             f"{' or '.join(suffixes)}")
    if path.exists() and path.resolve() == source.resolve():
        raise InceptionError(f"--out {path}: is the input artifact; inputs are never overwritten")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        given = f"--out {path}" if out is not None else f"{path} (the default output; pass --out)"
        raise InceptionError(f"{given}: cannot write into {folder} (permission denied)")
    return path


def _source(artifact: str | os.PathLike, recipe: Any) -> tuple[Path, Any]:
    """The file to export and the recipe that opens it (``torchvision:NAME`` implies one)."""
    src, recipe = resolve_with_recipe(artifact, _recipe(recipe))
    if src.suffix.lower() == ONNX_SUFFIX or src.suffix.lower() in _engine_suffixes():
        raise InceptionError(f"{src}: is already an exported model; export takes a run folder, "
                             f"a checkpoint or foreign weights with --recipe")
    return src, recipe


def _engine_suffixes() -> set[str]:
    return {s.lower() for b in engine_builders().values() for s in b.suffixes}


def _recipe(recipe: Recipe | str | os.PathLike | None) -> Recipe | None:
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    return load_recipe(recipe)


def _batch_error(batch: str | None) -> Callable[[str], InceptionError] | None:
    """``--batch TEXT: why``, when the range came from the command line."""
    return None if not batch else (lambda msg: InceptionError(f"--batch {batch}: {msg}"))


def _check_opset(opset: int, given: str = "--opset") -> None:
    """The opsets torch's exporter writes and ONNX Runtime runs; checked before any work.
    ``given``: where the value came from (``--opset``, or the recipe's ``export.opset``)."""
    if opset not in OPSETS:
        name = f"--opset {opset}" if given == "--opset" else f"{given}={opset}"
        raise InceptionError(f"{name}: expected an opset from {OPSETS[0]} to {OPSETS[-1]} "
                             "(default 17)")


def _check_count(samples: int | None, batch: tuple[int, int, int], data: Any) -> int:
    if samples is not None:
        if samples < 1:
            raise InceptionError(f"--check-samples: expected at least 1, got {samples}")
        return samples
    if data is None or str(data) == "random":
        return max(16, sum(batch))  # every batch size of the range at least once
    return MAX_CHECK_SAMPLES


def _common(precision: str, allowed: Sequence[str], calib_data: Any, calib_samples: int,
            calib_method: str, to: str) -> None:
    builders = _built_by(precision) if to == ONNX and precision not in allowed else []
    extra = f"; {precision} is built with --to {' or --to '.join(builders)}" if builders else ""
    _choice(precision, allowed, "--precision", extra)
    _choice(calib_method, CALIBRATION_METHODS, "--calib-method")
    if precision == "int8" and calib_data is None:
        raise InceptionError("--precision int8 needs calibration images: --calib-data PATH|digits")
    if calib_samples < 1:
        raise InceptionError(f"--calib-samples: expected at least 1, got {calib_samples}")


@dataclass
class _Job:
    """One export, once its arguments are checked: the model, its facts and where it goes."""

    src: Path
    model: Any
    recipe: Recipe
    classes: list[str]
    pre: dict[str, Any]
    bounds: tuple[int, int, int]
    opset: int
    path: Path
    props: dict[str, str]
    doc: str
    check: Any  # data.Samples for the parity check
    notes: list[str] = field(default_factory=list)


def _prepare(src: Path, out: Any, to: str, precision: str, batch: str | None,
             opset: int | None, recipe: Any, overrides: Any, check_samples: int | None,
             calib_data: Any) -> _Job:
    """Load ``src`` and check the rest of the arguments, before any file is written."""
    model, resolved, classes, pre, source = load_with_facts(src, _recipe(recipe), overrides)
    bounds = parse_batch_range(batch or resolved.export.batch, _batch_error(batch))
    given = "--opset" if opset is not None else "export.opset"
    opset = int(resolved.export.opset if opset is None else opset)
    _check_opset(opset, given)
    if to == ONNX and precision == "int8" and opset < 13:
        raise InceptionError(f"--opset {opset}: INT8 (per-channel QDQ) needs opset 13 or newer")
    path = _output(src, out, to, precision)
    props = metadata_props(resolved, classes, pre, "fp32", bounds, source)
    check = load_samples(calib_data, pre, classes, _check_count(check_samples, bounds, calib_data))
    notes = [f"{check.skipped} unreadable images skipped"] if check.skipped else []
    return _Job(src, model, resolved, classes, pre, bounds, opset, path, props,
                f"{resolved.name}: GoogLeNet exported by inceptionctl from {src.name}", check,
                notes)


def _quantize(fp32: Path, out: Path, flavour: str, calib: list[Any], method: str, log: Log,
              src: Path) -> dict[str, Any]:
    """Write ``out``, the INT8 QDQ ONNX of ``fp32`` in ``flavour`` (by the registry's quantizer
    for it); returns the INT8 facts (flavour, calibration, and the quantizer's settings)."""
    quant = quantizer(flavour)
    quant.require()
    meta = {"flavour": flavour, "calibration_method": method,
            "calibration_samples": sum(len(b) for b in calib)}
    try:
        with warnings.catch_warnings():  # numpy's, from a calibrator meeting NaN ("All-NaN ...")
            warnings.simplefilter("ignore", RuntimeWarning)
            settings = cast(Quantizer, quant).quantize_int8(fp32, out, calib, flavour, method,
                                                            metadata=int8_props(meta), log=log)
    except InceptionError as exc:
        # the fp32 file is ours (often a temporary one): the user's artifact is what to name
        why = one_line(exc).removeprefix(f"{fp32}: ")
        if not _finite_on(fp32, calib):
            why = ("its output on the calibration images is not finite (NaN or inf): damaged "
                   "weights; nothing to calibrate")
        raise InceptionError(f"{src}: {why}") from None
    return {**meta, **settings}


def _finite_on(onnx_path: Path, calib: list[Any]) -> bool:
    """Whether the fp32 ONNX's logits on the first calibration batch are finite."""
    import torch

    from .backend import open_artifact

    try:
        with open_artifact(onnx_path) as session:
            return bool(torch.isfinite(session.run(calib[0])).all())
    except InceptionError:
        return True  # cannot tell: the quantizer's own reason stands


def _report(job: _Job, file: Path, to: str, precision: str, parity: Parity, started: float,
            int8: dict[str, Any] | None) -> ExportReport:
    return ExportReport(file=str(file), format=to, size_bytes=file.stat().st_size,
                        precision=precision, batch=job.bounds, opset=job.opset,
                        source=str(job.src), parity=parity, seconds=time.monotonic() - started,
                        passed=parity.passed, int8=int8, notes=job.notes)


def _finish(report: ExportReport, log: Log) -> ExportReport:
    p = report.parity
    log(f"parity: max |diff| {p.max_abs_diff:#.3g} ({p.relative_diff:.2e} of the logit range), "
        f"top-1 agreement {p.top1_agreement:.2f}%"
        + (f", top-1 {p.top1_reference:.2f}% -> {p.top1_exported:.2f}%"
           if p.top1_reference is not None else "")
        + (" -- passed" if report.passed else " -- FAILED"))
    if not report.passed:
        raise ExportCheckFailed(report.failure(), report)
    return report


def export_onnx(artifact: str | os.PathLike, out: str | os.PathLike | None = None,
                precision: str = "fp32", batch: str | None = None, opset: int | None = None,
                calib_data: str | os.PathLike | None = None, calib_samples: int = 256,
                calib_method: str = "minmax", int8_flavour: str = "cpu",
                recipe: Recipe | str | None = None, overrides: Any = None,
                check_samples: int | None = None, log: Log | None = None) -> ExportReport:
    """Export a checkpoint (or foreign weights with ``recipe``) to ONNX and prove parity.

    ``batch`` is ``MIN:OPT:MAX`` (default: the recipe's ``export.batch``), ``opset`` defaults to
    the recipe's ``export.opset``. ``precision="fp16"`` writes the fp16 graph of
    :func:`~inceptionctl.artifact.float16_graph` (float32 input and output). ``precision="int8"`` quantizes statically (QDQ) on
    ``calib_samples`` images of ``calib_data`` (``digits`` or a folder: its train part) with
    ``calib_method``, in ``int8_flavour``, one of the flavours the registered quantizer offers
    (the built-in: ``cpu``, fastest on ONNX Runtime's CPU provider, or ``tensorrt``, symmetric
    int8 as TensorRT needs). Parity runs on ``calib_data``'s eval part when given (at most
    ``check_samples``, default 512), else on random images, through the backend that opens
    ``.onnx``. Raises :class:`ExportCheckFailed` (with ``.report``) when parity fails; the file
    is kept.
    """
    started = time.monotonic()
    log = log or _stderr
    _common(precision, precisions(ONNX), calib_data, calib_samples, calib_method, ONNX)
    flavours = int8_flavours()
    if flavours:
        _choice(int8_flavour, flavours, "--int8-flavour")
    src, recipe = _source(artifact, recipe)
    runner = backend_for_suffix(ONNX_SUFFIX)
    runner.require()  # the parity check needs it: fail before the work
    job = _prepare(src, out, ONNX, precision, batch, opset, recipe, overrides, check_samples,
                   calib_data)
    lo, opt, hi = job.bounds
    int8 = None
    if precision in ("fp32", "fp16"):
        log(f"export: {src} -> {job.path} ({precision}, opset {job.opset}, batch "
            f"{lo}:{opt}:{hi})")
        write_onnx(job.model, job.pre, job.bounds, job.opset,
                   {**job.props, **precision_props(precision)}, job.path, job.doc,
                   float16=precision == "fp16")
    else:
        log(f"export: {src} -> {job.path} (int8 {int8_flavour}, opset {job.opset}, batch "
            f"{lo}:{opt}:{hi})")
        calib = calibration_batches(calib_data, job.pre, job.classes, calib_samples, batch=opt,
                                    log=log)
        with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
            fp32 = write_onnx(job.model, job.pre, job.bounds, job.opset, job.props,
                              Path(tmp) / "fp32.onnx", job.doc)
            int8 = _quantize(fp32, job.path, int8_flavour, calib, calib_method, log, src)
    with runner.open(job.path) as session:
        parity = prove_parity(job.model, session, job.check, job.bounds, precision, log)
    return _finish(_report(job, job.path, ONNX, precision, parity, started, int8), log)


def export_engine(artifact: str | os.PathLike, to: str, out: str | os.PathLike | None = None,
                  precision: str = "fp32", batch: str | None = None, opset: int | None = None,
                  calib_data: str | os.PathLike | None = None, calib_samples: int = 256,
                  calib_method: str = "minmax", recipe: Recipe | str | None = None,
                  overrides: Any = None, check_samples: int | None = None,
                  device: str = "auto", log: Log | None = None,
                  engine_options: dict[str, Any] | None = None) -> ExportReport:
    """Build ``to``'s engine from a checkpoint (through an ONNX) or from one of our ONNX files,
    and prove parity.

    ``to`` names a registered :class:`~inceptionctl.backend.EngineBuilder`. int8 hands the
    builder a QDQ ONNX of its ``int8_flavour`` (quantized by the registry's quantizer for that
    flavour), with the calibration batches too; a builder without a flavour calibrates on the
    batches itself; fp16 hands it the fp16 ONNX (:func:`~inceptionctl.artifact.float16_graph`).
    From an ONNX (export once, build on each target machine) parity is proven against that ONNX
    run by the backend that opens ``.onnx``; from a checkpoint, against PyTorch. The builder
    must be available (else one clear BackendUnavailable line). ``engine_options`` go to the
    builder as they are (``timing_cache``, ``tf32``, ``verbose``: None/False are left out).
    """
    opts = {k: v for k, v in (engine_options or {}).items() if v not in (None, False)}
    started = time.monotonic()
    log = log or _stderr
    builder = _builder(to)
    given = resolve_artifact(artifact)
    from_onnx = given.suffix.lower() == ONNX_SUFFIX
    # An INT8 ONNX carries its quantization: it needs no calibration images.
    quantized = from_onnx and read_onnx_metadata(given)["precision"] == "int8"
    _common(precision, builder.builds, calib_data or ("-" if quantized else None), calib_samples,
            calib_method, to)
    builder.require()
    if from_onnx:
        return _engine_from_onnx(given, to, builder, out, precision, batch, calib_data,
                                 calib_samples, calib_method, check_samples, device, log,
                                 started, opts)
    src, recipe = _source(artifact, recipe)
    job = _prepare(src, out, to, precision, batch, opset, recipe, overrides, check_samples,
                   calib_data)
    with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
        onnx_path = write_onnx(job.model, job.pre, job.bounds, job.opset,
                               {**job.props, **precision_props(precision)},
                               Path(tmp) / "model.onnx", job.doc, float16=precision == "fp16")
        engine, int8 = _build(builder, to, onnx_path, job.path, precision, job.bounds,
                              (calib_data, job.pre, job.classes, calib_samples, calib_method),
                              device, log, src, quantized=False, options=opts)
    with open_artifact(engine, backend=to, device=device) as session:
        parity = prove_parity(job.model, session, job.check, job.bounds, precision, log)
    return _finish(_report(job, engine, to, precision, parity, started, int8), log)


def _build(builder: Backend, to: str, onnx_path: Path, out: Path, precision: str,
           bounds: tuple[int, int, int], calib_args: tuple[Any, ...], device: str, log: Log,
           src: Path, quantized: bool, options: dict[str, Any]
           ) -> tuple[Path, dict[str, Any] | None]:
    """The engine built from ``onnx_path`` (quantized first for int8 in the builder's flavour,
    unless it is ``quantized`` already), and the INT8 facts (None above int8)."""
    calib_data, pre, classes, calib_samples, calib_method = calib_args
    calib, int8 = None, None
    if precision == "int8" and not quantized:
        calib = calibration_batches(calib_data, pre, classes, calib_samples, batch=bounds[1],
                                    log=log)
        flavour = cast(EngineBuilder, builder).int8_flavour
        if flavour:
            qdq = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
            int8 = _quantize(onnx_path, qdq, flavour, calib, calib_method, log, src)
            onnx_path = qdq
        else:
            int8 = {"flavour": None, "calibration_method": calib_method,
                    "calibration_samples": sum(len(b) for b in calib)}
    log(f"export: {src} -> {out} ({to} {precision}, batch {':'.join(map(str, bounds))})")
    engine = Path(cast(EngineBuilder, builder).build_engine(
        onnx_path, out, precision, bounds, calib, log, device=device, **options))
    return engine, int8


def _engine_from_onnx(src: Path, to: str, builder: Backend, out: Any, precision: str,
                      batch: str | None, calib_data: Any, calib_samples: int, calib_method: str,
                      check_samples: int | None, device: str, log: Log, started: float,
                      options: dict[str, Any]) -> ExportReport:
    """``export MODEL.onnx --to ENGINE``: the engine from one of our ONNX files (its facts from
    its metadata), checked against that ONNX."""
    meta = read_onnx_metadata(src)
    have = meta["precision"]
    if have != "fp32" and have != precision:
        raise InceptionError(f"{src}: is a {have} ONNX; build it with --precision {have} (or "
                             f"start from the fp32 ONNX)")
    bounds = parse_batch_range(batch, _batch_error(batch)) if batch else tuple(meta["batch"])
    path = _output(src, out, to, precision)
    if path.resolve() == src.resolve():
        raise InceptionError(f"--out {path}: is the input artifact; inputs are never overwritten")
    check = load_samples(calib_data, meta["preprocessing"], meta["classes"],
                         _check_count(check_samples, bounds, calib_data))
    runner = backend_for_suffix(ONNX_SUFFIX)
    runner.require()
    with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
        onnx_path = src
        if precision == "fp16" and have == "fp32":
            onnx_path = Path(tmp) / "model.fp16.onnx"
            write_float16_copy(src, onnx_path, precision_props("fp16"))
        elif precision == "int8" and have == "fp32":
            onnx_path = Path(tmp) / src.name  # the quantizer writes beside it, in tmp
            onnx_path.write_bytes(src.read_bytes())
        engine, int8 = _build(builder, to, onnx_path, path, precision, bounds,
                              (calib_data, meta["preprocessing"], meta["classes"], calib_samples,
                               calib_method), device, log, src, quantized=have == "int8",
                              options=options)
    with runner.open(src) as reference, open_artifact(engine, backend=to, device=device) as session:
        def onnx_logits(x: Any) -> Any:  # the ONNX's own range bounds each batch
            import torch

            return torch.cat([reference.run(part) for part in x.split(bounds[2])])

        parity = prove_parity(onnx_logits, session, check, bounds, precision, log)
    report = ExportReport(file=str(engine), format=to, size_bytes=engine.stat().st_size,
                          precision=precision, batch=bounds, opset=_opset_of(src),
                          source=str(src),
                          parity=parity, seconds=time.monotonic() - started,
                          passed=parity.passed, int8=int8 or meta["int8"],
                          notes=[f"parity against {src.name} ({have}, ONNX Runtime)"])
    return _finish(report, log)


def _opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file declares (0 when it declares none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def export(artifact: str | os.PathLike, to: str = ONNX, **options: Any) -> ExportReport:
    """``inceptionctl export ARTIFACT --to TARGET`` (:func:`targets`): dispatch with a
    'did you mean'."""
    target = _choice(to, targets(), "--to")
    if target == ONNX:
        # checked as every command checks it, though the ONNX path's parity runs on the CPU
        resolve_device(options.pop("device", "auto"))
        options.pop("engine_options", None)
        return export_onnx(artifact, **options)
    options.pop("int8_flavour", None)
    return export_engine(artifact, target, **options)
