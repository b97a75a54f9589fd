"""The ONNX Runtime backend: our exported ``.onnx`` models (fp32, INT8 QDQ) and INT8 quantization.

``onnxruntime`` is imported only inside the functions that need it, so listing backends and
``--help`` work where it is not installed. Everything the core needs from ONNX Runtime goes
through this object: running a model (:meth:`OnnxRuntimeBackend.open`) and static INT8
quantization (:meth:`OnnxRuntimeBackend.quantize_int8`, used by ``inceptionctl export``).

A session reads what the model is from the ``metadata_props`` our exporter writes, through
:func:`inceptionctl.artifact.read_onnx_metadata` (the keys are documented in
:mod:`inceptionctl.artifact`); a ``.onnx`` file without them is refused with one line.

Capabilities (:mod:`inceptionctl.backend`): it runs fp32 and int8, is the registry's
:class:`~inceptionctl.backend.Quantizer` (flavours ``cpu`` and ``tensorrt``), and times the ONNX
the core hands it (int8: the ``cpu`` flavour).

Execution providers: ``CPUExecutionProvider`` by default; ``device="cuda[:N]"`` uses the CUDA
provider (onnxruntime-gpu), and ``providers=["tensorrt", "cuda"]`` (short or full names) picks
explicitly, e.g. ONNX Runtime's TensorRT provider where the installed package offers it.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from inceptionctl.artifact import (LRN_INT8_FLOAT_STEPS, Kind, lrn_step, read_onnx_metadata,
                                   unfold_lrn)
from inceptionctl.backend import ArtifactInfo, Availability, Backend, BuildContext, Session
from inceptionctl.errors import InceptionError, one_line
from inceptionctl.files import atomic_path
from inceptionctl.runtime import parse_device

PACKAGE = "onnxruntime"
INSTALL = "pip install onnxruntime (or onnxruntime-gpu)"

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}

# ONNX tensor element types -> torch dtypes of an input we can feed.
_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16,
              "tensor(double)": torch.float64, "tensor(uint8)": torch.uint8}

# The two INT8 flavours (see quantize_int8). Measured on this project's 2-core AMD EPYC CPU
# (AVX-512 VNNI), ONNX Runtime 1.32, googlenet-bn with realistic (Kaiming) weights, batch 8,
# 224x224, speed-up over ORT fp32 in one interleaved run: u8 activations + s8 weights 2.3x
# (per-channel, per-tensor and reduce_range alike); u8/u8 1.1x; symmetric s8/s8 1.1x. The cpu
# flavour takes u8/s8 per-channel (as fast as per-tensor, more accurate). With each Concat's
# inputs on its output's parameters (share_concat_quantization), u8/s8 went from 2.72x to 3.06x
# (plain InferenceSession, one session alive at a time; the same CPU, ORT 1.32).
# Splitting the 7x7/2 stem into an exact space-to-depth step and a 4x4/1 convolution
# (space_to_depth_stem) gave another 1.02-1.04x (ORT 1.18 and 1.32).
FLAVOURS: dict[str, dict[str, Any]] = {
    "cpu": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True,
            "reduce_range": False, "symmetric_activations": False, "symmetric_weights": True,
            "quantize_bias": True},
    # TensorRT accepts only symmetric int8 (zero zero-points) on activations and weights.
    # Biases stay float (TensorRT fuses them; its DequantizeLinear takes no int32 input).
    "tensorrt": {"activation_type": "int8", "weight_type": "int8", "per_channel": True,
                 "reduce_range": False, "symmetric_activations": True, "symmetric_weights": True,
                 "quantize_bias": False},
}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _import_ort() -> Any:
    import onnxruntime  # noqa: PLC0415 - lazy by design: the core never imports it

    return onnxruntime


def _resolve_providers(ort: Any, device: str, providers: Sequence[str] | None
                       ) -> tuple[list[Any], str]:
    """The provider list for ``InferenceSession`` and the device it means; a clear error if
    the installed onnxruntime cannot honour the request."""
    available = list(ort.get_available_providers())
    kind, index = parse_device(device or "cpu")
    if kind == "auto":
        kind = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    index = index or 0
    if providers:
        wanted = [PROVIDERS.get(p.lower(), p) for p in providers]
    elif kind == "cuda":
        wanted = ["CUDAExecutionProvider"]
    else:
        wanted = ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        hint = " (install onnxruntime-gpu)" if any(p != "CPUExecutionProvider"
                                                     for p in missing) else ""
        asked = f"--device {device}: " if kind == "cuda" and not providers else ""
        raise InceptionError(f"{asked}onnxruntime {ort.__version__} here has no "
                             f"{', '.join(missing)} (it offers {', '.join(available)}){hint}")
    if kind == "cpu" and any(p != "CPUExecutionProvider" for p in wanted):
        raise InceptionError(f"--device cpu: providers {', '.join(wanted)} need --device cuda")
    chosen: list[Any] = []
    for p in wanted:
        chosen.append((p, {"device_id": index}) if p != "CPUExecutionProvider" else p)
    if "CPUExecutionProvider" not in wanted:
        chosen.append("CPUExecutionProvider")  # for the odd node a GPU provider does not take
    return chosen, (f"cuda:{index}" if kind == "cuda" else "cpu")


class OnnxRuntimeSession(Session):
    """One ONNX Runtime ``InferenceSession`` over one of our exported models."""

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None,
                 providers: Sequence[str] | None = None, recipe: Any = None, **_: Any):
        path = Path(path)
        if not path.is_file():
            raise InceptionError(f"{path}: no such file")
        # a foreign .onnx is refused before loading it, unless a recipe speaks for it
        meta = read_onnx_metadata(path, recipe)
        ort = _import_ort()
        chosen, self.device = _resolve_providers(ort, device, providers)
        if threads is not None and threads < 0:
            raise InceptionError(f"threads: expected 0 (all cores) or more, got {threads}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: no provider chatter on stderr
        if threads:
            so.intra_op_num_threads = int(threads)
        self.threads = threads
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=chosen)
        except Exception as exc:
            raise InceptionError(f"{path}: ONNX Runtime cannot load it: {one_line(exc, 200)}") from None
        inputs, outputs = self.sess.get_inputs(), self.sess.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise InceptionError(f"{path}: expected one input and an output, the model has "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        shape = list(inputs[0].shape)
        dtype = _ORT_TYPES.get(inputs[0].type)
        if len(shape) != 4 or dtype is None:
            raise InceptionError(f"{path}: expected an [N, C, H, W] float input, the model's "
                                 f"'{self.input_name}' is {inputs[0].type} {shape}")
        h, w = shape[2], shape[3]
        self.spatial = h if isinstance(h, int) and h == w else None
        n_out = outputs[0].shape[-1] if outputs[0].shape else None
        if isinstance(n_out, int) and n_out != len(meta["classes"]):
            named = "the recipe given (--recipe) has" if meta.get("recipe_used") else \
                "the metadata names"
            raise InceptionError(f"{path}: {named} {len(meta['classes'])} classes, the graph "
                                 f"outputs {n_out} logits")
        lo, opt, hi = meta["batch"]
        if meta["source"].get("kind") == "foreign" and isinstance(shape[0], int):
            lo = opt = hi = shape[0]  # a foreign graph with a fixed batch
        self.info = ArtifactInfo(
            path=str(path), kind=Kind.ONNX.value, recipe=meta["recipe"], classes=meta["classes"],
            preprocessing=meta["preprocessing"], precision=meta["precision"],
            batch_range=(lo, hi), input_dtype=dtype,
            extra={"backend": "onnxruntime", "onnxruntime": ort.__version__,
                   "providers": self.sess.get_providers(), "batch_profile": (lo, opt, hi),
                   "inceptionctl_version": meta["version"], "source": meta["source"],
                   "int8": meta["int8"], "input": self.input_name, "output": self.output_name,
                   "threads": threads or 0, "recipe_used": bool(meta.get("recipe_used"))})

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.sess is None:
            raise InceptionError(f"{self.info.path}: the session is closed")
        self.check_input(batch, self.spatial)
        x = batch.detach().cpu().contiguous().numpy()
        try:
            (out,) = self.sess.run([self.output_name], {self.input_name: x})
        except Exception as exc:
            raise InceptionError(f"{self.info.path}: ONNX Runtime failed on a batch of "
                                 f"{list(batch.shape)}: {one_line(exc, 200)}") from None
        return torch.from_numpy(out).float()

    def close(self) -> None:
        self.sess = None


def share_concat_quantization(model: Any) -> int:
    """Give each Concat's quantized inputs the quantization parameters of its output, in place;
    returns how many inputs changed.

    ``quantize_static`` calibrates every Inception branch's output on its own range, so each
    module's Concat requantizes all four branches (ONNX Runtime's ``QLinearConcat`` with a
    lookup table per input). With the output's scale and zero point on the branch's Q/DQ pair,
    the branch's last convolution requantizes straight into the Concat's scale, and the Concat
    only copies bytes (TensorFlow Lite's quantization spec requires the same of concatenation).
    The output's range covers every branch's (it is their union), so no value is clipped. An
    input is left alone unless
    it is a ``DequantizeLinear`` of a ``QuantizeLinear`` whose per-tensor parameters no other
    tensor uses, and the Concat's output goes to one ``QuantizeLinear``.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def per_tensor(name: str) -> bool:
        t = inits.get(name)
        return t is not None and all(d == 1 for d in t.dims)

    changed = 0
    for concat in (n for n in g.node if n.op_type == "Concat"):
        after = consumers.get(concat.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or len(after[0].input) < 3:
            continue
        scale, zero = after[0].input[1], after[0].input[2]
        if not (per_tensor(scale) and per_tensor(zero)):
            continue
        for name in concat.input:
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == \
                "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3 \
                    or (q.input[1], q.input[2]) == (scale, zero):
                continue
            pair = [q, *consumers.get(q.output[0], [])]
            users = {id(n) for p in q.input[1:3] for n in consumers.get(p, [])}
            if any(n.op_type != "DequantizeLinear" or len(n.input) < 3 for n in pair[1:]) \
                    or users != {id(n) for n in pair}:
                continue  # the parameters are someone else's too, or not a plain pair
            for n in pair:
                n.input[1], n.input[2] = scale, zero
            changed += 1
    used = {name for n in g.node for name in n.input}
    stale = [t for t in g.initializer if t.name not in used]
    for t in stale:
        g.initializer.remove(t)
    return changed


def space_to_depth_stem(model: Any) -> bool:
    """Split a QDQ model's first convolution, when it has stride 2, into a space-to-depth step
    and a stride-1 convolution, in place; returns whether it did.

    GoogLeNet's ``conv1`` (7x7/2 on 3 channels) runs at a quarter of the INT8 speed of the other
    convolutions on ONNX Runtime's CPU provider: each output gathers 7 runs of 21 bytes. After a
    space-to-depth by 2 (3 -> 12 channels at half the size) the same sums are a 4x4/1
    convolution that gathers 4 runs of 48 bytes. The space-to-depth is itself a
    ``QLinearConv``: 2x2/2 with one-hot int8 weights of scale 1, requantized onto the input's own
    scale and zero point, so it copies bytes exactly (ONNX Runtime has uint8 ``SpaceToDepth``
    only from 1.28; this runs wherever ``QLinearConv`` does). The convolution then takes the
    original int8 weights rearranged, zero on the taps outside the kernel, so the integer sums
    and the output are unchanged bit for bit. Left alone unless the first ``Conv`` reads a
    ``DequantizeLinear`` of a ``QuantizeLinear`` of a graph input with static height and width,
    has stride 2, no dilation or groups, and int8 weights with zero zero-points.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    found = _stride_2_stem(model.graph)
    if found is None:
        return False
    conv, q_x, dq_w, w, layout = found
    front, tail, half, shift = layout
    f_out, c_in = w.shape[:2]
    shifted = np.zeros((f_out, c_in, 2 * half[0], 2 * half[1]), np.int8)
    shifted[:, :, shift[0]:shift[0] + w.shape[2], shift[1]:shift[1] + w.shape[3]] = w
    # tap (2a + dy, 2b + dx) of channel c -> tap (a, b) of channel 4c + 2dy + dx
    folded = shifted.reshape(f_out, c_in, half[0], 2, half[1], 2).transpose(0, 1, 3, 5, 2, 4)
    folded = np.ascontiguousarray(folded.reshape(f_out, c_in * 4, half[0], half[1]))
    one_hot = np.zeros((c_in * 4, c_in, 2, 2), np.int8)
    for c in range(c_in):
        for dy in range(2):
            for dx in range(2):
                one_hot[c * 4 + dy * 2 + dx, c, dy, dx] = 1
    g = model.graph
    weight = next(t for t in g.initializer if t.name == dq_w.input[0])
    weight.CopyFrom(numpy_helper.from_array(folded, dq_w.input[0]))
    name = f"{conv.name or conv.output[0]}_space_to_depth"
    g.initializer.extend([numpy_helper.from_array(one_hot, f"{name}_w"),
                          numpy_helper.from_array(np.array(1.0, np.float32), f"{name}_w_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), f"{name}_w_zero")])
    scale, zero = q_x.input[1], q_x.input[2]
    nodes = [helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_w_scale",
                                                   f"{name}_w_zero"], [f"{name}_wd"],
                              name=f"{name}_w_dq"),
             helper.make_node("Conv", [conv.input[0], f"{name}_wd"], [f"{name}_y"], name=name,
                              kernel_shape=[2, 2], strides=[2, 2],
                              pads=[front[0], front[1], tail[0], tail[1]]),
             helper.make_node("QuantizeLinear", [f"{name}_y", scale, zero], [f"{name}_q"],
                              name=f"{name}_q"),
             helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero], [f"{name}_dq"],
                              name=f"{name}_dq")]
    conv.input[0] = f"{name}_dq"
    for a in conv.attribute:
        if a.name == "kernel_shape":
            a.ints[:] = half
        elif a.name == "strides":
            a.ints[:] = [1, 1]
        elif a.name == "pads":
            a.ints[:] = [0, 0, 0, 0]
    at = list(g.node).index(conv)
    for node in reversed(nodes):
        g.node.insert(at, node)
    return True


def _stride_2_stem(g: Any) -> tuple[Any, ...] | None:
    """The first ``Conv`` of graph ``g`` when :func:`space_to_depth_stem` applies to it:
    ``(conv, its input's QuantizeLinear, its weights' DequantizeLinear, the int8 weights,
    (front pads, tail pads, half kernel, tap shift))``; else None."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    users: dict[str, int] = {}
    for n in g.node:
        for name in n.input:
            users[name] = users.get(name, 0) + 1
    inputs = {i.name: i for i in g.input}

    def scalar(name: str) -> bool:
        return name in inits and all(d == 1 for d in inits[name].dims)

    conv = next((n for n in g.node if n.op_type == "Conv"), None)
    dq_x = producer.get(conv.input[0]) if conv is not None else None
    q_x = producer.get(dq_x.input[0]) if dq_x is not None and dq_x.op_type == \
        "DequantizeLinear" else None
    # the input per-tensor, dequantized with the parameters it was quantized with (the step
    # requantizes onto them)
    if q_x is None or q_x.op_type != "QuantizeLinear" or q_x.input[0] not in inputs \
            or len(q_x.input) < 3 or not all(scalar(i) for i in q_x.input[1:3]) \
            or list(dq_x.input[1:3]) != list(q_x.input[1:3]):
        return None
    # the weights: int8, zero zero-points, per output channel (axis 0) or per tensor, and this
    # convolution's alone (they are rewritten in place)
    dq_w = producer.get(conv.input[1])
    if dq_w is None or dq_w.op_type != "DequantizeLinear" or len(dq_w.input) < 3 \
            or any(i not in inits for i in dq_w.input) \
            or users.get(dq_w.input[0]) != 1 or users.get(dq_w.output[0]) != 1:
        return None
    axis = next((helper.get_attribute_value(a) for a in dq_w.attribute if a.name == "axis"), 1)
    w = numpy_helper.to_array(inits[dq_w.input[0]])
    if w.dtype != np.int8 or w.ndim != 4 or numpy_helper.to_array(inits[dq_w.input[2]]).any() \
            or not (scalar(dq_w.input[1]) or axis in (0, -4)):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    dims = inputs[q_x.input[0]].type.tensor_type.shape.dim
    size = [d.dim_value for d in dims[2:]] if len(dims) == 4 else []
    if list(attrs.get("strides", [1, 1])) != [2, 2] or attrs.get("group", 1) != 1 \
            or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or len(size) != 2 or min(size) <= 0 \
            or list(attrs.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
        return None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    front, tail, half, shift = [], [], [], []
    for axis in range(2):
        n, k, begin, end = size[axis], w.shape[2 + axis], pads[axis], pads[axis + 2]
        out = (n + begin + end - k) // 2 + 1
        f = begin + begin % 2                      # an even front pad: phases start at 0
        kk = k + (f - begin)
        kk += kk % 2                               # the kernel, shifted and made even
        # the tail pad that gives ``out`` rows; -1 (one row the original never reads) is 0,
        # as the 2x2/2 step's output size rounds down
        t = 2 * (out + kk // 2 - 1) - f - n
        if t < -1:
            return None
        front.append(f)
        tail.append(max(t, 0))
        half.append(kk // 2)
        shift.append(f - begin)
    return conv, q_x, dq_w, w, (front, tail, half, shift)


class _Batches:
    """A ``CalibrationDataReader`` over preprocessed batches, readable in ranges (so ORT's
    calibrators reduce one batch at a time instead of holding every activation in memory)."""

    def __init__(self, name: str, batches: Sequence[torch.Tensor]):
        self.items = [{name: b.detach().to("cpu", torch.float32).contiguous().numpy()}
                      for b in batches if len(b)]
        self.start, self.end = 0, len(self.items)

    def get_next(self) -> dict[str, Any] | None:
        if self.start >= self.end:
            return None
        self.start += 1
        return self.items[self.start - 1]

    def __iter__(self) -> "_Batches":
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.items)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.items))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    package = PACKAGE
    install_hint = INSTALL
    suffixes = (".onnx",)
    rank = 1
    precisions = ("fp32", "int8")
    builds = ("int8",)               # as a Quantizer: INT8 QDQ from an fp32 ONNX
    flavours = tuple(FLAVOURS)

    def availability(self) -> Availability:
        try:
            ort = _import_ort()
        except ModuleNotFoundError as exc:
            if exc.name in (None, PACKAGE) or str(exc.name).startswith(PACKAGE + "."):
                return Availability(False, f"onnxruntime not installed: {INSTALL}")
            return Availability(False, f"onnxruntime cannot be imported: {one_line(exc, 200)}")
        except Exception as exc:  # a broken install (missing shared library, ...)
            return Availability(False, f"onnxruntime cannot be imported: "
                                       f"{type(exc).__name__}: {one_line(exc, 200)}")
        devices = ["cpu"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            devices += [f"cuda:{i}" for i in range(count)] or ["cuda"]
        return Availability(True, "", str(ort.__version__), tuple(devices))

    def open(self, path: Path, device: str = "cpu", threads: int | None = None,
             providers: Sequence[str] | None = None, recipe: Any = None, **_: Any) -> Session:
        self.require()
        return OnnxRuntimeSession(Path(path), device, threads=threads, providers=providers,
                                  recipe=recipe)

    def make_artifact(self, checkpoint: Path, precision: str, ctx: BuildContext
                      ) -> tuple[Path, dict[str, Any]]:
        """The ONNX to time: the core's fp32 export, or its INT8 QDQ in the ``cpu`` flavour
        (the fastest here)."""
        return (ctx.quantized("cpu") if precision == "int8" else ctx.onnx()), {}

    # ------------------------------------------------------------------- used by export

    def quantize_int8(self, fp32_path: str | Path, out_path: str | Path,
                      calib_batches: Sequence[torch.Tensor], flavour: str = "cpu",
                      method: str = "minmax", metadata: dict[str, str] | None = None,
                      log: Callable[[str], Any] | None = None) -> dict[str, Any]:
        """Write ``out_path``: static INT8 (QDQ) of the fp32 ONNX; returns the settings used.

        Pre-processing (``quant_pre_process``: shape inference and graph optimisation) first,
        then ``quantize_static`` calibrated on ``calib_batches`` (preprocessed ``[N, C, H, W]``)
        with ``method``. Flavours: ``cpu`` (u8 activations, s8 per-channel weights: the fastest
        on ONNX Runtime's CPU provider) and ``tensorrt`` (symmetric s8 activations and weights,
        zero zero-points, as TensorRT requires). The fp32 file's ``metadata_props`` are copied
        and updated with ``metadata``; the output is written atomically.
        """
        import onnx

        log = log or (lambda _msg: None)
        if flavour not in FLAVOURS:
            raise InceptionError(f"int8 flavour '{flavour}': expected one of "
                                 f"{', '.join(FLAVOURS)}")
        if method not in CALIBRATION_METHODS:
            raise InceptionError(f"calibration method '{method}': expected one of "
                                 f"{', '.join(CALIBRATION_METHODS)}")
        self.require()
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        fp32_path, out_path = Path(fp32_path), Path(out_path)
        src = onnx.load(str(fp32_path))
        input_name = src.graph.input[0].name
        props = {p.key: p.value for p in src.metadata_props}
        unfolded = unfold_lrn(src) > 0  # a file written before LRN was unfolded
        reader = _Batches(input_name, calib_batches)
        samples = sum(len(b) for b in calib_batches)
        if not len(reader):
            raise InceptionError("int8: no calibration samples")
        spec = FLAVOURS[flavour]
        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
        extra = {"ActivationSymmetric": spec["symmetric_activations"],
                 "WeightSymmetric": spec["symmetric_weights"],
                 "QuantizeBias": spec["quantize_bias"],
                 # One batch at a time through the calibrator: bounded memory at 224x224.
                 "CalibStridedMinMax": 1}
        log(f"int8: calibrating ({method}, {samples} samples, {flavour} flavour: "
            f"{spec['activation_type']} activations, {spec['weight_type']} per-channel weights)")
        with tempfile.TemporaryDirectory(prefix="inceptionctl-quant-") as tmp:
            pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            source = Path(tmp) / "unfolded.onnx" if unfolded else fp32_path
            if unfolded:
                onnx.save(src, str(source))
            del src
            try:
                # ORT's calibrators print progress on stdout, which belongs to --json output.
                with contextlib.redirect_stdout(sys.stderr):
                    quant_pre_process(str(source), str(pre))
                    # an unfolded LRN's power stays fp32 (see artifact.LRN_INT8_FLOAT_STEPS)
                    float_steps = [n.name for n in onnx.load(str(pre)).graph.node
                                   if lrn_step(n) in LRN_INT8_FLOAT_STEPS]
                    quantize_static(str(pre), str(raw), reader, quant_format=QuantFormat.QDQ,
                                    nodes_to_exclude=float_steps,
                                    activation_type=qtype[spec["activation_type"]],
                                    weight_type=qtype[spec["weight_type"]],
                                    per_channel=spec["per_channel"],
                                    reduce_range=spec["reduce_range"], calibrate_method=calib,
                                    extra_options=extra)
            except InceptionError:
                raise
            except Exception as exc:
                raise InceptionError(f"{fp32_path}: INT8 quantization failed: "
                                     f"{one_line(exc, 200)}") from None
            model = onnx.load(str(raw))
        shared = share_concat_quantization(model)
        # TensorRT picks its own kernels for the stem; the rewrite is for ONNX Runtime's CPU.
        folded = flavour == "cpu" and space_to_depth_stem(model)
        settings = {"flavour": flavour, "calibration_method": method,
                    "calibration_samples": samples, "format": "QDQ", **spec,
                    "concat_inputs_shared": shared, "stem_space_to_depth": folded}
        props.update(metadata or {})
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        with atomic_path(out_path) as tmp_out:
            onnx.save(model, str(tmp_out))
        return settings

    def qdq_facts(self, path: str | Path) -> dict[str, Any]:
        """What the Q/DQ nodes of an INT8 ONNX use: element types and whether every
        zero-point is zero (TensorRT's requirement)."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        inits = {t.name: t for t in model.graph.initializer}
        types, nonzero, count = set(), 0, 0
        for node in model.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
                continue
            zp = inits.get(node.input[2])
            if zp is None:
                continue
            count += 1
            types.add(onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name)
            nonzero += int((numpy_helper.to_array(zp) != 0).sum())
        return {"qdq_nodes": count, "zero_point_types": sorted(types),
                "nonzero_zero_points": nonzero}
