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
import time
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
# Weights are quantized to 7 bits (reduce_range) in both flavours. A CPU without VNNI (AVX2, or
# AVX-512 before VNNI) multiplies u8 x s8 with VPMADDUBSW, whose int16 sum of two products
# saturates above 32,767: 255 x 127 x 2 does, 255 x 64 x 2 does not. Files are written once and
# run anywhere, so every file stays below the limit. Measured on a 2-core AMD EPYC without
# AVX-512 (AVX2 only, ORT 1.32), the demo model on digits: 8-bit weights 96.4% top-1 agreement
# with fp32 (-2.8 points of accuracy; the tensorrt flavour's s8 activations 95.0%), 7-bit 100%
# and within float rounding of the exact QDQ arithmetic (mean |diff| of the logits 0.027; 8-bit
# weights computed exactly, as VNNI does, 0.024). Speed: 0.98x of 8-bit weights' on that CPU
# (googlenet-bn, batch 8, plain sessions, one interleaved run: within its noise), alike on VNNI.
# The 7x7/2 stem over 4-column cells with both output phases as channels (space_to_depth_stem)
# gave another 1.03-1.12x in the same plain sessions (ORT 1.32; the earlier form, a one-hot
# 2x2/2 space-to-depth step and a 4x4/1 convolution, gave 1.02-1.04x).
FLAVOURS: dict[str, dict[str, Any]] = {
    "cpu": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True,
            "reduce_range": True, "symmetric_activations": False, "symmetric_weights": True,
            "quantize_bias": True},
    # TensorRT accepts only symmetric int8 (zero zero-points) on activations and weights.
    # Biases stay float (TensorRT fuses them; its DequantizeLinear takes no int32 input).
    "tensorrt": {"activation_type": "int8", "weight_type": "int8", "per_channel": True,
                 "reduce_range": True, "symmetric_activations": True, "symmetric_weights": True,
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
        size = int(meta["preprocessing"]["eval_size"])
        if meta.get("recipe_used") and isinstance(h, int) and isinstance(w, int) \
                and (h, w) != (size, size):
            raise InceptionError(f"{path}: the graph takes {h}x{w} inputs, the recipe given "
                                 f"(--recipe) makes {size}x{size} crops (its eval.size)")
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
    """Rewrite a QDQ model's first convolution, when it has stride 2, to read its input as
    4-column cells, in place; returns whether it did.

    GoogLeNet's ``conv1`` (7x7/2 on 3 channels) runs at a fraction of the INT8 speed of the other
    convolutions on ONNX Runtime's CPU provider: each output gathers 7 runs of 21 bytes.
    Here the quantized input ``[N, C, H, W]`` is viewed as ``[N, H, W/4, 4C]``: every 4
    neighbouring columns of a row become one cell of 4C channels. That is the same transpose
    that moves the channels last, which ONNX Runtime does before any NHWC convolution, so it
    costs nothing extra. A convolution over the cells (stride 2 down the rows, 1 across the cells)
    then computes both output columns of each cell: output column ``2j + p`` is output channel
    ``p * F + f``. A reshape of the NHWC result puts those columns back in place: ``[N, OH,
    OW/2, 2F]`` is ``[N, OH, OW, F]`` in memory. Each output gathers 7 runs of 36 bytes, and the
    convolution has 2F outputs, so ONNX Runtime uses its wider kernels.

    The weights are the original int8 ones, moved to their cell and phase, and zero on the taps
    outside the kernel. The bias and the per-channel scales are repeated for the two phases,
    and padding cells hold the input's zero point, as the padding did. So the integer sums and
    the output are unchanged, bit for bit, where ONNX Runtime fuses the convolution into
    ``QLinearConv`` (its default optimization level, or ``ORT_ENABLE_EXTENDED``) and sums int8
    products exactly (VNNI or AMX; the u8s8 kernel of CPUs with AVX2 alone may saturate pairs of
    products, as ONNX Runtime documents, and the pairs here are not the original's).

    The graph is left alone unless all of these hold:
    - the first ``Conv`` reads a ``DequantizeLinear`` of a per-tensor uint8 ``QuantizeLinear`` of
      a graph input with static height and width, and the width is a multiple of 4;
    - the conv has stride 2, an even output width, no dilation and no groups, and at least 2
      output channels;
    - its weights are int8 with zero zero-points;
    - its output goes to one per-tensor uint8 ``QuantizeLinear``;
    - no other node (nor a subgraph, nor a graph input or output) uses anything this rewrites,
      and none of the names it adds is taken.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    found = _stride_2_stem(model.graph)
    if found is None:
        return False
    conv, q_x, dq_x, q_y, dq_w, w, repeat, plan = found
    (c_in, height, width), (out_h, out_w), left, (top, bottom), cells, kernel = plan
    f_out = w.shape[0]
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    # tap kx of output column 2j + p reads column 4(j + q) + dx, where 2p - left + kx = 4q + dx
    phased = np.zeros((2 * f_out, 4 * c_in, w.shape[2], kernel), np.int8)
    for p in range(2):
        for kx in range(w.shape[3]):
            q, dx = divmod(2 * p - left + kx, 4)
            phased[p * f_out:(p + 1) * f_out, dx * c_in:(dx + 1) * c_in, :, q + cells[0]] = \
                w[:, :, :, kx]
    inits[dq_w.input[0]].CopyFrom(numpy_helper.from_array(phased, dq_w.input[0]))
    for name in repeat:  # per output channel: the same for both phases
        a = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(np.concatenate([a, a]), name))
    name = conv.name or conv.output[0]
    g.initializer.extend(numpy_helper.from_array(np.array(shape, np.int64), f"{name}_{tag}")
                         for tag, shape in (("cells5", [-1, c_in, height, width // 4, 4]),
                                            ("cells", [-1, height, width // 4, 4 * c_in]),
                                            ("columns", [-1, out_h, out_w, f_out])))
    before = [helper.make_node("Reshape", [q_x.output[0], f"{name}_cells5"], [f"{name}_r5"],
                               name=f"{name}_r5"),
              helper.make_node("Transpose", [f"{name}_r5"], [f"{name}_t5"], name=f"{name}_t5",
                               perm=[0, 2, 3, 4, 1]),
              helper.make_node("Reshape", [f"{name}_t5", f"{name}_cells"], [f"{name}_nhwc"],
                               name=f"{name}_cells"),
              helper.make_node("Transpose", [f"{name}_nhwc"], [f"{name}_nchw"],
                               name=f"{name}_nchw", perm=[0, 3, 1, 2])]
    dq_x.input[0] = f"{name}_nchw"
    at = list(g.node).index(dq_x)
    for node in reversed(before):
        g.node.insert(at, node)
    for a in list(conv.attribute):
        if a.name in ("kernel_shape", "strides", "pads"):
            conv.attribute.remove(a)
    conv.attribute.extend([helper.make_attribute("kernel_shape", [w.shape[2], kernel]),
                           helper.make_attribute("strides", [2, 1]),
                           helper.make_attribute("pads", [top, cells[0], bottom, cells[1]])])
    # the two phases back to columns, between the QuantizeLinear and its readers
    out = q_y.output[0]
    q_y.output[0] = f"{name}_phases"
    after = [helper.make_node("Transpose", [f"{name}_phases"], [f"{name}_phases_nhwc"],
                              name=f"{name}_phases_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", [f"{name}_phases_nhwc", f"{name}_columns"],
                              [f"{name}_columns_nhwc"], name=f"{name}_columns"),
             helper.make_node("Transpose", [f"{name}_columns_nhwc"], [out],
                              name=f"{name}_columns_nchw", perm=[0, 3, 1, 2])]
    at = list(g.node).index(q_y) + 1
    for node in reversed(after):
        g.node.insert(at, node)
    changed = {conv.output[0], dq_x.output[0], dq_w.output[0], dq_w.input[0], *repeat,
               *conv.input[2:]}
    for v in [v for v in g.value_info if v.name in changed]:  # shapes that no longer hold
        g.value_info.remove(v)
    return True


# the suffixes of the tensors, nodes and initializers space_to_depth_stem adds
STEM_NAMES = ("cells5", "cells", "columns", "r5", "t5", "nhwc", "nchw", "phases",
              "phases_nhwc", "columns_nhwc", "columns_nchw")


def _stride_2_stem(g: Any) -> tuple[Any, ...] | None:
    """The first ``Conv`` of graph ``g`` when :func:`space_to_depth_stem` applies to it:
    ``(conv, its input's QuantizeLinear and DequantizeLinear, its output's QuantizeLinear, its
    weights' DequantizeLinear, the int8 weights, the initializers to repeat per phase, plan)``
    with plan ``((C, H, W), (output height, width), left pad in columns, (top, bottom) pads,
    (left, right) pads in cells, kernel width in cells)``; else None."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in g.initializer}
    producer = {out: n for n in g.node for out in n.output}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    outputs = {o.name for o in g.output}
    inputs = {i.name: i for i in g.input}

    def scalar(name: str) -> bool:
        return name in inits and all(d == 1 for d in inits[name].dims)

    def only(name: str, node: Any) -> bool:  # read by ``node`` alone, and not a graph output
        return [id(n) for n in users.get(name, [])] == [id(node)] and name not in outputs

    def uint8(name: str) -> bool:
        return inits[name].data_type == onnx.TensorProto.UINT8

    # a subgraph (If, Loop) could read what this rewrites: not counted below, so declined
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):
        return None

    conv = next((n for n in g.node if n.op_type == "Conv"), None)
    dq_x = producer.get(conv.input[0]) if conv is not None else None
    q_x = producer.get(dq_x.input[0]) if dq_x is not None and dq_x.op_type == \
        "DequantizeLinear" else None
    # the input per-tensor (a reshape keeps it) in uint8, read by this convolution alone
    if q_x is None or q_x.op_type != "QuantizeLinear" or q_x.input[0] not in inputs \
            or len(q_x.input) < 3 or not all(scalar(i) for i in q_x.input[1:3]) \
            or not all(scalar(i) for i in dq_x.input[1:3]) or not uint8(q_x.input[2]) \
            or not only(q_x.output[0], dq_x) or not only(dq_x.output[0], conv):
        return None
    # the output: one per-tensor uint8 QuantizeLinear. (ONNX Runtime fuses Q/DQ around a Conv
    # into QLinearConv with these types only when Reshape and Transpose sit between them; other
    # types would run a float Conv whose sums round in the new order.)
    after = users.get(conv.output[0], [])
    q_y = after[0] if len(after) == 1 else None
    if q_y is None or q_y.op_type != "QuantizeLinear" or len(q_y.input) < 3 \
            or not all(scalar(i) for i in q_y.input[1:3]) or not uint8(q_y.input[2]) \
            or conv.output[0] in outputs:
        return None
    # the weights: int8, zero zero-points, per output channel (axis 0) or per tensor, and this
    # convolution's alone (they are rewritten in place)
    dq_w = producer.get(conv.input[1])
    if dq_w is None or dq_w.op_type != "DequantizeLinear" or len(dq_w.input) < 3 \
            or any(i not in inits for i in dq_w.input) \
            or not only(dq_w.input[0], dq_w) or not only(dq_w.output[0], conv):
        return None
    axis = next((helper.get_attribute_value(a) for a in dq_w.attribute if a.name == "axis"), 1)
    w = numpy_helper.to_array(inits[dq_w.input[0]])
    if w.dtype != np.int8 or w.ndim != 4 or numpy_helper.to_array(inits[dq_w.input[2]]).any() \
            or not (scalar(dq_w.input[1]) or axis in (0, -4)):
        return None
    # what holds one value per output channel: the weights' scales, the bias (float, or int32
    # through a DequantizeLinear) and its scales; each must be this convolution's alone
    f_out = w.shape[0]
    repeat = [n for n in dq_w.input[1:3] if not scalar(n)]
    if len(conv.input) > 2 and conv.input[2]:
        bias = conv.input[2]
        dq_b = producer.get(bias)
        if dq_b is None and bias in inits:
            if not only(bias, conv):
                return None
            repeat.append(bias)
        elif dq_b is not None and dq_b.op_type == "DequantizeLinear" \
                and all(i in inits for i in dq_b.input) and only(bias, conv) \
                and only(dq_b.input[0], dq_b):
            per_channel = [i for i in dq_b.input if not scalar(i)]
            if any(not only(i, dq_b) for i in per_channel):
                return None
            repeat += per_channel
        else:
            return None
    if f_out < 2 or any(list(inits[n].dims) != [f_out] for n in repeat) \
            or any(not only(n, dq_w) for n in dq_w.input[1:3] if n in repeat) \
            or any(n in inputs for n in [dq_w.input[0], *repeat]):  # overridable at run time
        return None
    taken = {name for n in g.node for name in (n.name, *n.input, *n.output)} | set(inits) \
        | set(inputs) | outputs
    if any(f"{conv.name or conv.output[0]}_{tag}" in taken for tag in STEM_NAMES):
        return None
    dims = inputs[q_x.input[0]].type.tensor_type.shape.dim
    size = [d.dim_value for d in dims[1:]] if len(dims) == 4 else []
    plan = _cell_plan({a.name: helper.get_attribute_value(a) for a in conv.attribute}, size,
                      w.shape)
    return None if plan is None else (conv, q_x, dq_x, q_y, dq_w, w, repeat, plan)


def _cell_plan(attrs: dict[str, Any], size: list[int], w_shape: tuple[int, ...]
               ) -> tuple[Any, ...] | None:
    """The geometry of :func:`space_to_depth_stem` for a Conv with attributes ``attrs`` on an
    input of ``size`` (C, H, W) with weights of ``w_shape``; None where it does not apply."""
    if list(attrs.get("strides", [1, 1])) != [2, 2] or attrs.get("group", 1) != 1 \
            or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or len(size) != 3 or min(size) <= 0 or size[0] != w_shape[1] or size[2] % 4 \
            or list(attrs.get("kernel_shape", w_shape[2:])) != list(w_shape[2:]):
        return None
    c_in, height, width = size
    top, left, bottom, right = list(attrs.get("pads", [0, 0, 0, 0]))
    out_h = (height + top + bottom - w_shape[2]) // 2 + 1
    out_w = (width + left + right - w_shape[3]) // 2 + 1
    if out_h <= 0 or out_w <= 0 or out_w % 2:
        return None
    # cells read by output cell j: j + first .. j + last
    first, last = (-left) // 4, (2 - left + w_shape[3] - 1) // 4
    kernel = last - first + 1
    cells_right = out_w // 2 + kernel - 1 - width // 4 + first
    if cells_right < 0:
        return None  # more cells than output columns: not worth a slice
    return ((c_in, height, width), (out_h, out_w), left, (top, bottom), (-first, cells_right),
            kernel)


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

    def matmul_rates(self, device: str, n: int = 1024, rounds: int = 2,
                     iters: int = 10) -> dict[str, float]:
        """ONNX Runtime's own multiply on the CPU (MLAS, not torch's MKL or oneDNN): GFLOP/s of
        an n-cube fp32 ``MatMul`` and GOP/s of a uint8 x int8 ``MatMulInteger`` (what its INT8
        convolutions multiply), each with a constant right-hand side as a layer's weights, in
        plain sessions, one alive at a time; the best of ``rounds`` interleaved medians of
        ``iters`` calls. ``{}`` on other devices or where onnxruntime is missing."""
        if device != "cpu" or not self.availability().available:
            return {}
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        ort = _import_ort()
        rng = np.random.default_rng(0)
        so = ort.SessionOptions()
        so.log_severity_level = 3

        def session(op: str, a_type: int, out_type: int, b: np.ndarray) -> Any:
            graph = helper.make_graph(
                [helper.make_node(op, ["A", "B"], ["Y"])], "matmul",
                [helper.make_tensor_value_info("A", a_type, [n, n])],
                [helper.make_tensor_value_info("Y", out_type, [n, n])],
                [numpy_helper.from_array(b, "B")])
            model = helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
            return ort.InferenceSession(model.SerializeToString(), so,
                                        providers=["CPUExecutionProvider"])

        feeds = {"fp32": rng.standard_normal((n, n)).astype(np.float32),
                 "int8": rng.integers(0, 256, (n, n)).astype(np.uint8)}
        weights = {"fp32": rng.standard_normal((n, n)).astype(np.float32),
                   "int8": rng.integers(-64, 65, (n, n)).astype(np.int8)}
        ops = {"fp32": ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT),
               "int8": ("MatMulInteger", TensorProto.UINT8, TensorProto.INT32)}
        best = {kind: 0.0 for kind in ops}
        for _ in range(max(1, rounds)):
            for kind, (op, a_type, out_type) in ops.items():
                sess, feed = session(op, a_type, out_type, weights[kind]), {"A": feeds[kind]}
                for _ in range(2):
                    sess.run(None, feed)
                times = []
                for _ in range(max(1, iters)):
                    start = time.perf_counter()
                    sess.run(None, feed)
                    times.append(time.perf_counter() - start)
                best[kind] = max(best[kind], 2.0 * n ** 3 / sorted(times)[len(times) // 2] / 1e9)
                del sess
        return best

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
            f"{spec['activation_type']} activations, {spec['weight_type']} per-channel weights"
            + (" in 7 bits)" if spec['reduce_range'] else ")"))
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
