"""The TensorRT backend: build engines from our ONNX exports and run them on an NVIDIA GPU.

``tensorrt`` is imported only inside the functions that need it, so listing backends and
``--help`` work where it is not installed. Device buffers are torch CUDA tensors and work is
enqueued on the current torch CUDA stream (no pycuda).

An engine never travels alone: next to ``model.engine`` lies ``model.engine.json``, the
*sidecar*, with what the source ONNX's metadata says (recipe, classes, preprocessing, under the
names of :mod:`inceptionctl.artifact`, which reads and writes every sidecar and ONNX metadata),
the optimisation profile, and what the engine is tied to (TensorRT version, GPU and compute
capability). Engines are not portable across TensorRT releases or GPU architectures, so
:func:`check_trt_version` and :func:`check_gpu` refuse a mismatch with a rebuild hint before
TensorRT gets to fail on it.

Precision (see :func:`plan_build`):

- fp32: float network, TF32 off, so the engine matches PyTorch fp32.
- fp16: an ONNX that already carries fp16 is built *strongly typed* (its types are the truth);
  a float ONNX is built with the ``FP16`` builder flag where the installed TensorRT has it
  (10.x; 11 removed the flag, so there the ONNX must carry fp16).
- int8: the preferred path is *explicit* quantization: an INT8 ONNX with symmetric Q/DQ nodes
  (our exporter's "tensorrt" flavour), built strongly typed. Without Q/DQ nodes, *implicit*
  quantization calibrates with :class:`IInt8EntropyCalibrator2` on ``calib_batches``; TensorRT
  10 deprecates implicit quantization and 11 removes it, so it is the fallback only.

Capabilities (:mod:`inceptionctl.backend`): an :class:`~inceptionctl.backend.EngineBuilder`
(``export --to tensorrt``) that builds and runs fp32, fp16 and int8, its INT8 from the QDQ ONNX
of the ``tensorrt`` flavour; ``profile --time`` builds its engines the same way.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inceptionctl import artifact
from inceptionctl.artifact import Kind, parse_batch_profile, read_metadata, sidecar_path
from inceptionctl.backend import ArtifactInfo, Availability, Backend, BackendUnavailable, Session
from inceptionctl.errors import InceptionError
from inceptionctl.files import atomic_path
from inceptionctl.runtime import cuda_index

PACKAGE = "tensorrt"
INSTALL = "pip install 'inceptionctl[tensorrt]'"
MIN_VERSION = (8, 6)          # the tensor-name API (set_input_shape, execute_async_v3) is whole
PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_FORMAT = "inceptionctl.tensorrt-engine"
SIDECAR_VERSION = 1
# Engines are built from the run (or checkpoint) they came from: export takes no ONNX as input.
REBUILD = "rebuild it here from its run with `inceptionctl export RUN --to tensorrt`"

# ---------------------------------------------------------------------------- pure helpers

def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; a suffix (``"rc1"``, ``"+cuda12"``) ends it."""
    nums = []
    for part in str(text).strip().split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        nums.append(int(m.group()))
        if m.end() != len(part):
            break
    if not nums:
        raise InceptionError(f"unreadable TensorRT version '{text}'")
    return tuple(nums)


def check_trt_version(built: str, installed: str, where: str = "engine") -> None:
    """Raise unless an engine built by TensorRT ``built`` loads under ``installed``.

    Major, minor *and patch* must match: TensorRT itself refuses plans across patch releases
    ("expecting library version 8.0.0 got 8.0.1, please rebuild"). A fourth (build) number is
    ignored. Version-compatible engines (``BuilderFlag.VERSION_COMPATIBLE``) are not built here.
    """
    b, i = parse_version(built), parse_version(installed)
    if (b + (0, 0))[:3] != (i + (0, 0))[:3]:
        raise InceptionError(f"{where}: built with TensorRT {built} but TensorRT {installed} is "
                             f"installed; engines do not load across TensorRT versions: "
                             f"{REBUILD}, or install tensorrt=={built}")


def check_gpu(built: Mapping[str, Any], current: Mapping[str, Any], where: str = "engine") -> None:
    """Raise when the engine was built for another GPU architecture (compute capability).

    ``built``/``current`` are ``{"name": ..., "compute_capability": "9.0"}``. Another GPU model of
    the same architecture is allowed (TensorRT may warn that tactics were tuned elsewhere).
    """
    cb, cc = built.get("compute_capability"), current.get("compute_capability")
    if cb and cc and str(cb) != str(cc):
        raise InceptionError(f"{where}: built for {built.get('name', 'a GPU')} (compute capability "
                             f"{cb}) but this is {current.get('name', 'a GPU')} (compute "
                             f"capability {cc}); engines are tied to the GPU architecture: "
                             f"{REBUILD}")


def assess(version: str | None, cuda_devices: int, import_error: str | None = None) -> Availability:
    """Availability from the facts: tensorrt's version (None: not importable), CUDA device count.

    ``import_error`` says why an installed tensorrt failed to import (missing CUDA libraries...).
    """
    if version is None:
        if import_error:
            return Availability(False, f"tensorrt failed to import ({import_error}); reinstall: "
                                       f"{INSTALL}")
        return Availability(False, f"tensorrt not installed: {INSTALL}")
    try:
        too_old = parse_version(version)[:2] < MIN_VERSION
    except InceptionError:
        return Availability(False, f"tensorrt reports an unreadable version '{version}'", version)
    if too_old:
        need = ".".join(map(str, MIN_VERSION))
        return Availability(False, f"tensorrt {version} is too old (need >= {need} for the "
                                   f"tensor-name API): pip install -U 'inceptionctl[tensorrt]'",
                            version)
    if cuda_devices < 1:
        return Availability(False, "no CUDA device", version)
    return Availability(True, "", version, tuple(f"cuda:{i}" for i in range(cuda_devices)))


# TensorRT DataType member names -> torch dtypes (the bindings use these names since 8.x).
TRT_TO_TORCH: dict[str, torch.dtype] = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
    "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
    "BOOL": torch.bool, "FP8": torch.float8_e4m3fn,
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype for a TensorRT ``DataType`` (member or its name, e.g. ``"HALF"``)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    try:
        return TRT_TO_TORCH[str(name).upper()]
    except KeyError:
        raise InceptionError(f"TensorRT data type {name} has no torch equivalent here "
                             f"(known: {', '.join(TRT_TO_TORCH)})") from None


def one_line(messages: Iterable[str], limit: int = 5) -> str:
    """Messages joined on one line ("a; b; ... and 3 more"), inner newlines folded."""
    items = [" ".join(str(m).split()) for m in messages if str(m).strip()]
    extra = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + extra


_REQUIRED = {"tensorrt_version": str, "precision": str, "batch": list, "input": dict,
             "output": dict}


def write_sidecar(engine: str | Path, data: Mapping[str, Any]) -> Path:
    """Write the sidecar for ``engine`` atomically; returns its path."""
    return artifact.write_sidecar(engine, SIDECAR_FORMAT, SIDECAR_VERSION, data)


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The sidecar of ``engine``, validated; one clear error naming the file when unusable."""
    data = artifact.read_sidecar(engine, SIDECAR_FORMAT, SIDECAR_VERSION, kind="TensorRT",
                                 required=_REQUIRED, rebuild=REBUILD)
    if not isinstance(data["input"].get("name"), str) or \
            not isinstance(data["output"].get("name"), str):
        raise InceptionError(f"{sidecar_path(engine)}: corrupt TensorRT sidecar (input/output "
                             f"name missing); {REBUILD}")
    return data


def onnx_facts(model: Any) -> dict[str, Any]:
    """What the build needs to know about an ``onnx.ModelProto`` before TensorRT sees it.

    ``metadata`` (all metadata_props), ``inputs`` ([(name, dims)] with -1 for symbolic dims),
    ``has_qdq``, ``has_fp16`` and ``qdq_problem`` (why TensorRT cannot take its Q/DQ, or None).
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = []
    for vi in graph.input:
        if vi.name in inits:  # old exporters list weights as graph inputs
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1
                for d in vi.type.tensor_type.shape.dim]
        inputs.append((vi.name, dims))
    fp16 = onnx.TensorProto.FLOAT16
    ops = [n.op_type for n in graph.node]
    has_qdq = any(op in ("QuantizeLinear", "DequantizeLinear") for op in ops)
    has_fp16 = any(t.data_type == fp16 for t in graph.initializer) \
        or any(vi.type.tensor_type.elem_type == fp16
               for vi in list(graph.input) + list(graph.output) + list(graph.value_info)) \
        or any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute)
               for n in graph.node)
    problem = None
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        arr = numpy_helper.to_array(zp)
        if arr.dtype.kind == "u" or arr.dtype.name == "uint8":
            problem = (f"node {node.name or node.op_type} quantizes to unsigned 8-bit (the "
                       f"onnxruntime CPU flavour); TensorRT needs symmetric signed int8")
            break
        if arr.size and bool((arr != 0).any()):
            problem = (f"node {node.name or node.op_type} has a non-zero zero point; TensorRT "
                       f"needs symmetric quantization (zero points all 0)")
            break
    return {"metadata": {p.key: p.value for p in model.metadata_props}, "inputs": inputs,
            "has_qdq": has_qdq, "has_fp16": has_fp16,
            "qdq_problem": problem or _dequantized_type_problem(graph, inits)}


def _dequantized_type_problem(graph: Any, inits: Mapping[str, Any]) -> str | None:
    """Why TensorRT cannot parse a DequantizeLinear of a stored tensor (None when it can): it
    takes int8, fp8 and int4 only, and onnxruntime writes int32 biases unless QuantizeBias is off."""
    import onnx

    allowed = {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN,
               getattr(onnx.TensorProto, "INT4", onnx.TensorProto.INT8)}
    for node in graph.node:
        x = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if x is not None and x.data_type not in allowed:
            kind = onnx.TensorProto.DataType.Name(x.data_type).lower()
            return (f"node {node.name or node.op_type} dequantizes {kind} {x.name} (onnxruntime "
                    f"quantizes biases to int32 unless QuantizeBias is off); TensorRT's "
                    f"DequantizeLinear takes int8, fp8 or int4 only")
    return None


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder for one precision (decided without TensorRT at hand)."""

    strongly_typed: bool
    set_flags: tuple[str, ...]     # BuilderFlag member names to set
    clear_flags: tuple[str, ...]   # BuilderFlag member names to clear
    quantization: str              # none | explicit-qdq | implicit-calibration
    calibrate: bool


def trt_features(trt: Any) -> frozenset[str]:
    """Which of the builder features :func:`plan_build` cares about this tensorrt offers."""
    feats = {f for f in ("FP16", "INT8", "TF32") if hasattr(trt.BuilderFlag, f)}
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        feats.add("STRONGLY_TYPED")
    if hasattr(trt, "IInt8EntropyCalibrator2") and "INT8" in feats:
        feats.add("CALIBRATOR")
    return frozenset(feats)


def plan_build(precision: str, *, has_qdq: bool, has_fp16: bool, calibration: bool,
               features: Iterable[str], where: str = "ONNX", tf32: bool = False) -> BuildPlan:
    """The builder configuration for ``precision`` given the ONNX and the installed features.

    Precision the ONNX carries (Q/DQ or fp16 tensors) wins, through a strongly typed network;
    builder flags are used only to *add* precision to a float ONNX, where the TensorRT still has
    them. A request that contradicts the ONNX, or that this TensorRT cannot honour, is refused.
    An fp32 engine is fp32: TF32 is cleared unless ``tf32`` allows it (with TF32, parity with
    PyTorch fp32 at 1e-4 of the logit range can fail on a correct engine).
    """
    feats = frozenset(features)
    if precision not in PRECISIONS:
        raise InceptionError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    typed = "STRONGLY_TYPED" in feats
    if has_qdq and precision != "int8":
        raise InceptionError(f"{where} is an INT8 (Q/DQ) model; build it with --precision int8")
    if has_fp16 and precision != "fp16":
        raise InceptionError(f"{where} carries fp16 tensors; build it with --precision fp16 "
                             f"(or start from the fp32 ONNX)")
    tf32_off = ("TF32",) if "TF32" in feats and not tf32 else ()
    if precision == "fp32":
        return BuildPlan(False, (), tf32_off, "none", False)
    if precision == "fp16":
        if has_fp16:
            return (BuildPlan(True, (), (), "none", False) if typed
                    else BuildPlan(False, ("FP16",), (), "none", False))
        if "FP16" not in feats:
            raise InceptionError(f"{where} is fp32 and this TensorRT has no FP16 builder flag; "
                                 f"build fp32 or int8 here, or build from an fp16 ONNX "
                                 f"(`inceptionctl export RUN --to onnx --precision fp16`, then "
                                 f"`inceptionctl export RUN/best.fp16.onnx --to tensorrt "
                                 f"--precision fp16`)")
        return BuildPlan(False, ("FP16",), (), "none", False)
    # int8
    if has_qdq:
        return (BuildPlan(True, (), (), "explicit-qdq", False) if typed
                else BuildPlan(False, ("INT8",), (), "explicit-qdq", False))
    if "CALIBRATOR" not in feats:
        raise InceptionError(f"{where} has no Q/DQ nodes and this TensorRT has no implicit INT8 "
                             f"calibration; build from the run, which quantizes first "
                             f"(`inceptionctl export RUN --to tensorrt --precision int8`), or from "
                             f"a QDQ INT8 ONNX of the TensorRT flavour (`inceptionctl export RUN "
                             f"--to onnx --precision int8 --int8-flavour tensorrt --calib-data "
                             f"digits`)")
    if not calibration:
        raise InceptionError(f"{where} has no Q/DQ nodes: an INT8 engine needs calibration data "
                             f"(`inceptionctl export RUN --to tensorrt --precision int8 "
                             f"--calib-data digits`)")
    return BuildPlan(False, ("INT8",), tf32_off, "implicit-calibration", True)


def calibration_chunks(batches: Sequence[torch.Tensor], size: int,
                       chw: tuple[int, int, int]) -> list[torch.Tensor]:
    """Calibration batches regrouped into equal chunks of ``size`` (float32, contiguous, CPU).

    TensorRT calibrates at one fixed shape; a short tail is dropped unless it is all there is.
    """
    checked = []
    for i, b in enumerate(batches):
        if not isinstance(b, torch.Tensor) or b.ndim != 4 or tuple(b.shape[1:]) != tuple(chw):
            shape = list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise InceptionError(f"calibration batch {i}: expected [N, {chw[0]}, {chw[1]}, "
                                 f"{chw[2]}], got {shape}")
        if b.shape[0]:
            checked.append(b.detach().to("cpu", torch.float32))
    if not checked:
        raise InceptionError("calibration: no samples")
    data = torch.cat(checked)
    size = max(1, min(int(size), data.shape[0]))
    usable = data.shape[0] - data.shape[0] % size
    return [c.contiguous() for c in data[:usable].split(size)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------ tensorrt plumbing

def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _import_trt() -> Any:
    import tensorrt as trt  # noqa: PLC0415 - lazy by design

    return trt


_LOGGER: Any = None


def get_trt_logger(trt: Any) -> Any:
    """The process's one TensorRT logger (TensorRT keeps a single global logger: every Builder,
    Runtime and parser must share it, or messages land on whichever was made first).

    It keeps the errors and warnings of the current call (:meth:`begin` clears them and says
    where warnings go); errors end up in our one-line messages, warnings in the log, and with
    ``verbose`` TensorRT's info and verbose lines too.
    """
    global _LOGGER
    if _LOGGER is None or _LOGGER.trt is not trt:
        _LOGGER = _make_logger(trt)
    return _LOGGER


def _make_logger(trt: Any) -> Any:
    severity = trt.ILogger.Severity
    errors = {severity.ERROR, severity.INTERNAL_ERROR}

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.trt = trt
            self.errors: list[str] = []
            self.warnings: list[str] = []
            self.sink: Callable[[str], Any] | None = None
            self.verbose = False

        def begin(self, sink: Callable[[str], Any] | None = None, verbose: bool = False) -> Any:
            """Forget the previous call's messages; send this call's warnings to ``sink``."""
            self.errors, self.warnings = [], []
            self.sink, self.verbose = sink, verbose
            return self

        def log(self, level: Any, msg: str) -> None:
            if level in errors:
                self.errors.append(msg)
            elif level == severity.WARNING:
                self.warnings.append(msg)
                if self.sink:
                    self.sink(f"tensorrt: warning: {' '.join(str(msg).split())}")
            elif self.verbose and self.sink:
                self.sink(f"tensorrt: {msg}")

        def said(self) -> str:
            """This call's errors, else its warnings, on one line ('' when silent)."""
            return one_line(self.errors or self.warnings)

    return Logger()


def create(trt: Any, what: str, logger: Any, where: str) -> Any:
    """``trt.Builder(logger)`` or ``trt.Runtime(logger)``; one line with TensorRT's reason when
    it cannot be made (the bindings raise ``TypeError ... returned nullptr`` then, typically when
    the driver is older than the CUDA TensorRT was built for)."""
    try:
        made = getattr(trt, what)(logger)
    except Exception as exc:
        made, why = None, one_line([str(exc)])
    else:
        why = ""
    if made is None:
        said = logger.said() if hasattr(logger, "said") else ""
        cuda = trt_cuda_major()
        need = f"; TensorRT here is built for CUDA {cuda}: check the driver supports it " \
               f"(nvidia-smi)" if cuda else ""
        raise InceptionError(f"{where}: TensorRT could not create its {what} "
                             f"({said or why or 'no reason given'}){need}")
    return made


def trt_cuda_major() -> str | None:
    """The CUDA major the installed TensorRT wheels are built for (``tensorrt-cu13`` -> ``13``),
    from the installed distributions; None when that cannot be told."""
    from importlib import metadata

    for dist in metadata.distributions():
        m = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_]libs)?", str(dist.metadata["Name"] or ""))
        if m:
            return m.group(1)
    return None


def _gpu(index: int) -> dict[str, Any]:
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def _entropy_calibrator(trt: Any, chunks: list[torch.Tensor], device: torch.device) -> Any:
    """An IInt8EntropyCalibrator2 that feeds ``chunks`` from torch CUDA tensors."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.chunks = iter(chunks)
            self.size = int(chunks[0].shape[0])
            self.current: torch.Tensor | None = None  # alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return self.size

        def get_batch(self, names: list[str]) -> list[int] | None:
            chunk = next(self.chunks, None)
            if chunk is None:
                return None
            self.current = chunk.to(device).contiguous()
            # TensorRT reads it on its own stream: the copy must have landed.
            torch.cuda.current_stream(device).synchronize()
            return [self.current.data_ptr()]

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, out: str | Path, precision: str,
                 batch: tuple[int, int, int] | str,
                 calib_batches: Sequence[torch.Tensor] | None = None,
                 log: Callable[[str], Any] = print, workspace_gib: float = 4.0, *,
                 device: str = "cuda:0", timing_cache: str | Path | None = None,
                 tf32: bool = False, verbose: bool = False) -> Path:
    """Build the engine ``out`` from ``onnx_path`` and write its sidecar; returns ``out``.

    ``batch`` is the optimisation profile (min, opt, max) over the ONNX's dynamic batch axis;
    C, H, W come from the ONNX. ``calib_batches`` are preprocessed ``[N, C, H, W]`` tensors, used
    only for int8 from an ONNX without Q/DQ nodes. ``timing_cache`` is read when present and
    written back (under a file lock), to make rebuilds fast; a corrupt or foreign cache is
    replaced with a note. ``tf32`` allows TF32 in an fp32 engine; ``verbose`` sends TensorRT's
    own log to ``log``.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    profile = _check_build_request(onnx_path, out, precision, batch, workspace_gib)
    if isinstance(calib_batches, torch.Tensor):
        calib_batches = [calib_batches]
    av = TensorRTBackend().require()
    _check_writable(out)
    index = cuda_index(device, "TensorRT")
    if index >= torch.cuda.device_count():
        raise InceptionError(f"--device {device}: no such CUDA device (have "
                             f"{', '.join(av.devices)})")
    facts, meta = _read_onnx(onnx_path)
    trt = _import_trt()
    plan = plan_build(precision, has_qdq=facts["has_qdq"], has_fp16=facts["has_fp16"],
                      calibration=bool(calib_batches), features=trt_features(trt),
                      where=str(onnx_path), tf32=tf32)
    if calib_batches and not plan.calibrate:
        log(f"note: {onnx_path} carries its own quantization; calibration data not used")
    job = _Build(trt, onnx_path, precision, profile, plan, index, workspace_gib,
                 Path(timing_cache) if timing_cache else None, list(calib_batches or []), log,
                 verbose)
    started = time.perf_counter()
    blob, io = _build_serialized(job)
    layers = _layer_precisions(trt, blob, job)
    _write_engine(out, blob, {
        "engine": out.name,
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
        "precision": precision,
        "quantization": plan.quantization,
        "strongly_typed": plan.strongly_typed,
        "batch": list(profile),
        **io,
        "tensorrt_version": str(trt.__version__),
        "tensorrt_cuda": trt_cuda_major(),   # the CUDA major TensorRT's wheels are built for
        "torch_cuda": torch.version.cuda,    # torch's, which made the CUDA context
        "gpu": _gpu(index),
        "builder_flags": {"set": list(plan.set_flags), "cleared": list(plan.clear_flags),
                          "strongly_typed": plan.strongly_typed},
        "layer_precisions": layers,
        "workspace_gib": workspace_gib,
        "inceptionctl_version": _our_version(),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        # The ONNX's name and digest, not its path: export builds from a temporary copy.
        **artifact.sidecar_facts({"file": onnx_path.name, "sha256": _sha256(onnx_path)}, meta),
        "metadata": facts["metadata"],
    })
    log(f"wrote {out} ({len(blob) / 1e6:.1f} MB) and {sidecar_path(out).name} in "
        f"{time.perf_counter() - started:.1f}s")
    return out


def _check_build_request(onnx_path: Path, out: Path, precision: str,
                         batch: tuple[int, int, int] | str, workspace_gib: float
                         ) -> tuple[int, int, int]:
    """The batch profile, once the arguments are known good (before TensorRT is asked)."""
    if precision not in PRECISIONS:
        raise InceptionError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    profile = parse_batch_profile(batch)
    if out.suffix.lower() not in TensorRTBackend.suffixes:
        raise InceptionError(f"{out}: a TensorRT engine must end in "
                             f"{' or '.join(TensorRTBackend.suffixes)}")
    if not onnx_path.is_file():
        raise InceptionError(f"{onnx_path}: no such file")
    if workspace_gib <= 0:
        raise InceptionError(f"workspace: expected a positive size in GiB, got {workspace_gib}")
    return profile


def _read_onnx(onnx_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ONNX's graph facts (:func:`onnx_facts`) and our metadata, read by the one reader
    (:func:`inceptionctl.artifact.read_metadata`); what TensorRT cannot take is refused here."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise InceptionError(f"{onnx_path}: not a readable ONNX model "
                             f"({one_line([str(exc)])})") from None
    facts = onnx_facts(model)
    del model
    meta = read_metadata(facts["metadata"], onnx_path)
    if facts["qdq_problem"]:
        raise InceptionError(f"{onnx_path}: {facts['qdq_problem']}; export the TensorRT INT8 "
                             f"flavour (`inceptionctl export RUN --to onnx --precision int8 "
                             f"--int8-flavour tensorrt --calib-data digits`), or build from the "
                             f"run (`inceptionctl export RUN --to tensorrt --precision int8`)")
    if len(facts["inputs"]) != 1:
        raise InceptionError(f"{onnx_path}: expected one input (images), found "
                             f"{[n for n, _ in facts['inputs']] or 'none'}")
    return facts, meta


@dataclass
class _Build:
    """One engine build: what TensorRT is given, decided before it is called."""

    trt: Any
    onnx_path: Path
    precision: str
    profile: tuple[int, int, int]
    plan: BuildPlan
    index: int
    workspace_gib: float
    timing_cache: Path | None
    calib_batches: list[torch.Tensor]
    log: Callable[[str], Any]
    verbose: bool = False


def _build_serialized(job: _Build) -> tuple[bytes, dict[str, Any]]:
    """The serialized engine, and its input and output as the sidecar records them."""
    trt, lo, opt, hi = job.trt, *job.profile
    with torch.cuda.device(job.index):
        torch.cuda.init()  # TensorRT uses the CUDA context torch makes current
        logger = get_trt_logger(trt).begin(job.log, job.verbose)
        builder = create(trt, "Builder", logger, str(job.onnx_path))
        network, parser, inp, chw = _parse_network(job, builder, logger)
        config = builder.create_builder_config()
        if hasattr(trt, "ProfilingVerbosity"):  # per-layer precisions for the sidecar
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                     int(job.workspace_gib * (1 << 30)))
        for name in job.plan.set_flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in job.plan.clear_flags:
            config.clear_flag(getattr(trt.BuilderFlag, name))
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (lo, *chw), (opt, *chw), (hi, *chw))
        if config.add_optimization_profile(profile) < 0:
            raise InceptionError(f"{job.onnx_path}: TensorRT rejected the profile "
                                 f"{lo}:{opt}:{hi} ({logger.said()})")
        calibrator = _set_calibration(job, builder, config, inp.name, chw) \
            if job.plan.calibrate else None
        if job.timing_cache is not None:
            _load_timing_cache(job, config)
        mode = "strongly typed" if job.plan.strongly_typed else \
            f"builder flags {','.join(job.plan.set_flags) or '-'}"
        job.log(f"building {job.precision} engine ({job.plan.quantization}, {mode}, batch "
                f"{lo}:{opt}:{hi}, input {inp.name} {list(chw)}) on "
                f"{torch.cuda.get_device_name(job.index)}")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise InceptionError(f"{job.onnx_path}: TensorRT failed to build the {job.precision} "
                                 f"engine: {logger.said() or 'no reason given'}")
        outputs = [network.get_output(i).name for i in range(network.num_outputs)]
        _save_timing_cache(job, config)
        del calibrator, parser
    io = {"input": {"name": inp.name, "shape": [-1, *chw]},
          "output": {"name": "logits" if "logits" in outputs else outputs[0]}}
    return bytes(memoryview(serialized)), io


def _parse_network(job: _Build, builder: Any, logger: Any
                   ) -> tuple[Any, Any, Any, tuple[int, int, int]]:
    """The network parsed from the ONNX, its parser (kept alive with it), its input and C, H, W."""
    trt, (lo, opt, hi) = job.trt, job.profile
    version = str(trt.__version__)
    flags = 0
    if parse_version(version)[0] < 10:  # 10.x: explicit batch is the only mode; 11 drops the flag
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if job.plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    job.log(f"tensorrt {version}: parsing {job.onnx_path}")
    if not parser.parse_from_file(str(job.onnx_path)):
        errs = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise InceptionError(f"{job.onnx_path}: TensorRT could not parse it: "
                             f"{one_line(errs) or logger.said() or 'unknown parser error'}")
    if network.num_inputs != 1 or network.num_outputs < 1:
        raise InceptionError(f"{job.onnx_path}: expected one input and one output, TensorRT "
                             f"sees {network.num_inputs} and {network.num_outputs}")
    inp = network.get_input(0)
    dims = list(inp.shape)
    if len(dims) != 4 or any(d < 1 for d in dims[1:]):
        raise InceptionError(f"{job.onnx_path}: input '{inp.name}' must be [N, C, H, W] with "
                             f"fixed C, H, W, got {dims}")
    if dims[0] >= 1 and not lo == hi == dims[0]:
        raise InceptionError(f"{job.onnx_path}: the batch axis is fixed at {dims[0]}; export "
                             f"with a dynamic batch to build the profile {lo}:{opt}:{hi}")
    return network, parser, inp, (int(dims[1]), int(dims[2]), int(dims[3]))


def _set_calibration(job: _Build, builder: Any, config: Any, name: str,
                     chw: tuple[int, int, int]) -> Any:
    """Implicit INT8: the calibration profile and an entropy calibrator over the batches."""
    chunks = calibration_chunks(job.calib_batches, job.profile[1], chw)
    calib_profile = builder.create_optimization_profile()
    shape = (int(chunks[0].shape[0]), *chw)
    calib_profile.set_shape(name, shape, shape, shape)
    config.set_calibration_profile(calib_profile)
    calibrator = _entropy_calibrator(job.trt, chunks, torch.device("cuda", job.index))
    config.int8_calibrator = calibrator
    job.log(f"calibrating on {sum(c.shape[0] for c in chunks)} samples "
            f"(entropy calibrator, implicit quantization: deprecated in TensorRT 10)")
    return calibrator


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path.lock`` (builds sharing one timing cache take turns)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load_timing_cache(job: _Build, config: Any) -> None:
    """The timing cache from ``job.timing_cache`` on ``config``; a cache TensorRT cannot read
    (corrupt, or from another TensorRT/GPU) is replaced by a fresh one, with a note."""
    path = job.timing_cache
    assert path is not None
    try:
        with cache_lock(path):
            data = path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        job.log(f"warning: {path}: timing cache not read ({exc.strerror or exc}); starting afresh")
        data = b""
    cache = config.create_timing_cache(data) if data else None
    if data and (cache is None or not config.set_timing_cache(cache, False)):
        job.log(f"warning: {path}: not a timing cache of this TensorRT and GPU (corrupt or "
                f"foreign); starting a fresh one")
        cache = None
    if cache is None:
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(job: _Build, config: Any) -> None:
    """Write the build's timing cache back; any failure is a warning (the engine is kept)."""
    if job.timing_cache is None:
        return
    try:
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        with cache_lock(job.timing_cache), atomic_path(job.timing_cache) as tmp:
            tmp.write_bytes(data)
    except Exception as exc:  # a cache is an optimisation: say so, keep the engine
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line([str(exc)])
        job.log(f"warning: {job.timing_cache}: timing cache not saved ({why or type(exc).__name__})")


def layer_precisions(info: str | Mapping[str, Any]) -> list[dict[str, str]]:
    """Per-layer name, type and output precision from the engine inspector's JSON
    (``profiling_verbosity=DETAILED``; with less detail a layer is only its name)."""
    data = json.loads(info) if isinstance(info, str) else info
    out = []
    for layer in data.get("Layers", []):
        if not isinstance(layer, dict):
            out.append({"name": str(layer), "type": "", "precision": ""})
            continue
        outputs = layer.get("Outputs") or [{}]
        fmt = str(outputs[0].get("Format/Datatype", "")) if isinstance(outputs[0], dict) else ""
        out.append({"name": str(layer.get("Name", "")), "type": str(layer.get("LayerType", "")),
                    "precision": _datatype(fmt)})
    return out


def _datatype(fmt: str) -> str:
    """'Row major linear FP16 format' -> 'fp16' (the inspector's wording of an output)."""
    low = fmt.lower()
    for word, name in (("fp32", "fp32"), ("float", "fp32"), ("fp16", "fp16"), ("half", "fp16"),
                       ("bf16", "bf16"), ("int8", "int8"), ("fp8", "fp8"), ("int32", "int32")):
        if word in low:
            return name
    return fmt


def _layer_precisions(trt: Any, blob: bytes, job: _Build) -> list[dict[str, str]]:
    """:func:`layer_precisions` of the engine just built ([] where the inspector is missing)."""
    try:
        with torch.cuda.device(job.index):
            logger = get_trt_logger(trt).begin(job.log, job.verbose)
            engine = create(trt, "Runtime", logger, str(job.onnx_path)
                            ).deserialize_cuda_engine(blob)
            info = engine.create_engine_inspector().get_engine_information(
                trt.LayerInformationFormat.JSON)
        return layer_precisions(info)
    except Exception as exc:  # a missing fact, not a failed build
        job.log(f"note: per-layer precisions not recorded ({one_line([str(exc)])})")
        return []


def _write_engine(out: Path, blob: bytes, sidecar: Mapping[str, Any]) -> None:
    """The engine, then its sidecar (each atomically)."""
    try:
        with atomic_path(out) as tmp:
            tmp.write_bytes(blob)
    except OSError as exc:
        raise InceptionError(f"{out}: cannot write the engine ({exc.strerror or exc})") from None
    write_sidecar(out, sidecar)


def _check_writable(out: Path) -> None:
    """Fail before a long build, not after it, when ``out`` cannot be written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InceptionError(f"{out.parent}: cannot create the output folder "
                             f"({exc.strerror or exc})") from None
    if not os.access(out.parent, os.W_OK):
        raise InceptionError(f"{out.parent}: the output folder is not writable")


def _parser_error(err: Any) -> str:
    """One ONNX parser error as 'node N (name, Op): CODE: description'."""
    where = []
    node = _call(err, "node")
    if isinstance(node, int) and node >= 0:
        where.append(f"node {node}")
    name, op = _call(err, "node_name"), _call(err, "node_operator")
    if name or op:
        where.append(f"({', '.join(str(x) for x in (name, op) if x)})")
    code = _call(err, "code")
    code = getattr(code, "name", code)
    head = " ".join(where)
    return f"{head + ': ' if head else ''}{code + ': ' if code else ''}{_call(err, 'desc') or err}"


def _call(obj: Any, name: str) -> Any:
    fn = getattr(obj, name, None)
    with contextlib.suppress(Exception):
        return fn() if callable(fn) else fn
    return None


def _our_version() -> str:
    from inceptionctl import __version__

    return __version__


# ---------------------------------------------------------------------------------- session

class TensorRTSession(Session):
    """A deserialized engine and one execution context on one GPU."""

    def __init__(self, path: Path, device: str = "cuda:0", **_: Any):
        path = Path(path)
        index = cuda_index(device, "TensorRT")
        side = read_sidecar(path)
        trt = _import_trt()
        check_trt_version(side["tensorrt_version"], str(trt.__version__), str(path))
        if index >= torch.cuda.device_count():
            raise InceptionError(f"--device {device}: no such CUDA device (this machine has "
                                 f"{torch.cuda.device_count()})")
        check_gpu(side.get("gpu") or {}, _gpu(index), str(path))
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise InceptionError(f"{path}: cannot read ({exc.strerror})") from None
        expected = side.get("engine_sha256")
        if expected and hashlib.sha256(blob).hexdigest() != expected:
            raise InceptionError(f"{path}: the engine does not match its sidecar "
                                 f"{sidecar_path(path).name} (rebuilt or copied separately?); "
                                 f"{REBUILD}")
        self.device_obj = torch.device("cuda", index)
        self.device = str(self.device_obj)
        with torch.cuda.device(index):
            torch.cuda.init()
            self._logger = get_trt_logger(trt).begin(_stderr)
            self._runtime = create(trt, "Runtime", self._logger, str(path))
            self.engine = self._runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise InceptionError(f"{path}: TensorRT could not load the engine: "
                                     f"{self._logger.said() or 'no reason given'}; {REBUILD}")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise InceptionError(f"{path}: TensorRT could not create an execution context "
                                     f"(out of GPU memory?): {self._logger.said()}")
            # Our own stream: enqueueV3 on the legacy default stream synchronises with all
            # other work and TensorRT warns about it.
            self.stream = torch.cuda.Stream(self.device_obj)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise InceptionError(f"{path}: expected one input and an output, engine has inputs "
                                 f"{inputs} and outputs {outputs}")
        self.input_name = inputs[0]
        self.output_name = side["output"]["name"] if side["output"]["name"] in outputs \
            else outputs[0]
        in_shape = list(self.engine.get_tensor_shape(self.input_name))
        # The engine's own input type (fp16 for some fp16 builds); callers always give float32
        # and run() casts, so eval and predict treat every engine alike.
        self.in_dtype = torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        self.hw = (int(in_shape[2]), int(in_shape[3]))
        lo, opt, hi = side["batch"]
        preprocessing = dict(side.get("preprocessing") or {})
        preprocessing.setdefault("channels", int(in_shape[1]))
        preprocessing.setdefault("input_size", self.hw[0])
        out_shape = list(self.engine.get_tensor_shape(self.output_name))
        classes = side.get("classes") or [str(i) for i in range(max(0, int(out_shape[-1])))]
        self.info = ArtifactInfo(
            path=str(path), kind=Kind.ENGINE.value, recipe=side.get("recipe") or {}, classes=classes,
            preprocessing=preprocessing, precision=side["precision"], batch_range=(lo, hi),
            input_dtype=torch.float32,
            extra={"recipe_used": False,  # an engine speaks for itself, as our ONNX does
                   "batch_profile": (lo, opt, hi), "tensorrt": side["tensorrt_version"],
                   "gpu": side.get("gpu"), "quantization": side.get("quantization"),
                   "source": (side.get("source_onnx") or {}).get("source"),
                   "int8": (side.get("source_onnx") or {}).get("int8"),
                   "sidecar": str(sidecar_path(path)), "input": self.input_name,
                   "output": self.output_name})

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            raise InceptionError(f"{self.info.path}: the session is closed")
        square = self.hw[0] == self.hw[1]
        self.check_input(batch, self.hw[0] if square else None)
        if not square and tuple(batch.shape[2:]) != self.hw:
            raise InceptionError(f"{self.info.path}: input must be {self.hw[0]}x{self.hw[1]}, got "
                                 f"{batch.shape[2]}x{batch.shape[3]}")
        self._logger.begin(_stderr)
        with torch.cuda.device(self.device_obj), torch.cuda.stream(self.stream):
            stream = self.stream
            x = batch.to(self.device_obj, self.in_dtype).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                profile = self.info.extra["batch_profile"]
                raise InceptionError(f"{self.info.path}: TensorRT refused input shape "
                                     f"{list(x.shape)} (profile {profile})")
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self.out_dtype, device=self.device_obj)
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise InceptionError(f"{self.info.path}: TensorRT execution failed: "
                                     f"{self._logger.said() or 'no reason given'}")
            stream.synchronize()
        return out.float().cpu()

    def close(self) -> None:
        # The context must go before the engine, the engine before its runtime.
        self.context = None
        self.engine = None
        self._runtime = None
        self.stream = None


# ---------------------------------------------------------------------------------- backend

class TensorRTBackend(Backend):
    name = "tensorrt"
    package = PACKAGE
    install_hint = "pip install 'inceptionctl[tensorrt]' (needs an NVIDIA GPU and CUDA)"
    suffixes = (".engine", ".plan")
    rank = 2
    precisions = PRECISIONS
    builds = PRECISIONS
    int8_flavour = "tensorrt"  # explicit quantization: symmetric QDQ, zero zero-points

    def availability(self) -> Availability:
        try:
            trt = _import_trt()
        except ModuleNotFoundError as exc:
            if exc.name in (None, PACKAGE) or str(exc.name).startswith(PACKAGE + "."):
                return assess(None, 0)
            return assess(None, 0, import_error=one_line([str(exc)]))
        except Exception as exc:  # e.g. OSError: libnvinfer.so not found
            return assess(None, 0, import_error=one_line([f"{type(exc).__name__}: {exc}"]))
        version = str(getattr(trt, "__version__", "") or "unknown")
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        av = assess(version, devices)
        if av.available:  # importable and a GPU: only a Builder proves TensorRT works here
            try:
                create(trt, "Builder", get_trt_logger(trt).begin(), "tensorrt")
            except Exception as exc:  # any failure is the reason it is unavailable
                return Availability(False, one_line([str(exc)]).removeprefix("tensorrt: "),
                                    version)
        return av

    def open(self, path: Path, device: str = "cuda:0", **options: Any) -> Session:
        self.require()
        return TensorRTSession(Path(path), device, **options)

    def build_engine(self, onnx_path: str | Path, out: str | Path, precision: str,
                     batch: tuple[int, int, int] | str,
                     calib_batches: Sequence[torch.Tensor] | None = None,
                     log: Callable[[str], Any] = print, *, device: str = "cuda:0",
                     **options: Any) -> Path:
        """:func:`build_engine` (the module's), as the registry's EngineBuilder; ``options``:
        ``timing_cache``, ``tf32``, ``verbose`` (others are ignored)."""
        known = {k: options[k] for k in ("timing_cache", "tf32", "verbose") if k in options}
        return build_engine(onnx_path, out, precision, batch, calib_batches, log, device=device,
                            **known)


__all__ = ["BackendUnavailable", "BuildPlan", "TensorRTBackend", "TensorRTSession", "assess",
           "build_engine", "cache_lock", "calibration_chunks", "check_gpu", "check_trt_version",
           "create", "get_trt_logger", "layer_precisions", "one_line", "trt_cuda_major",
           "onnx_facts", "parse_batch_profile", "parse_version", "plan_build", "read_sidecar",
           "sidecar_path", "torch_dtype", "trt_features", "write_sidecar"]
