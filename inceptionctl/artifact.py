"""What an artifact is, and the one metadata format every artifact carries.

An ARTIFACT is one of (:class:`Kind`):

- a **run folder**: it means its ``best.pt`` (else ``last.pt``), see :func:`resolve_artifact`;
- a **checkpoint**: our ``.pt`` (:mod:`inceptionctl.checkpoint` writes and reads it);
- **foreign weights** (a torchvision state dict) plus the recipe that names their architecture;
- an **ONNX** model written by ``inceptionctl export`` (fp32, fp16 or INT8 QDQ);
- an **engine** built by a backend from an ONNX (e.g. TensorRT's ``.engine``), with its sidecar;
- **torchvision weights by name**, ``torchvision:googlenet`` (:func:`torchvision_artifact`):
  torchvision's ImageNet weights, fetched through its weights API into the torch hub cache, with
  the recipe that builds their architecture and the 1000 class names of their metadata (once
  resolved, foreign weights with a recipe);
- a **foreign ONNX** classifier, when a recipe names its preprocessing and classes
  (:func:`foreign_onnx_metadata`).

Each carries the same facts under the same names, so ``eval``, ``export``, ``profile`` and
``predict`` need nothing but the file: ``recipe`` (the resolved recipe, YAML spellings),
``classes`` (index = logit), ``preprocessing`` (:func:`preprocessing`), and where they apply
``precision``, ``batch`` (the declared range ``MIN:OPT:MAX``), ``version`` (the inceptionctl that
wrote it), ``source`` (what it was made from) and ``int8`` (how it was quantized). Every carrier
states a ``format`` and a ``format_version``; :func:`check_format_version` is the one rule for
all of them: a reader refuses a version newer than it understands.

==============================  ===========================================================
ONNX ``metadata_props``         (all strings; JSON where structured)
==============================  ===========================================================
``inceptionctl.format``         ``inceptionctl.onnx``
``inceptionctl.format_version`` ``1`` (readers refuse a newer one)
``inceptionctl.version``        the inceptionctl version that wrote the file
``inceptionctl.recipe``         the resolved recipe (JSON object, YAML spellings)
``inceptionctl.classes``        class names (JSON list; index = logit)
``inceptionctl.preprocessing``  JSON: input_size, resize, mean, std, interpolation, channels,
                                eval_size, eval_scales (as in checkpoints)
``inceptionctl.precision``      ``fp32``, ``fp16`` or ``int8``
``inceptionctl.batch``          the declared batch range ``MIN:OPT:MAX``
``inceptionctl.source``         JSON: file name, kind (checkpoint | foreign), weights (ema |
                                model), the checkpoint's meta
``inceptionctl.int8``           (INT8 only) JSON: flavour, calibration_method,
                                calibration_samples
==============================  ===========================================================

A checkpoint holds the same facts as plain values (``recipe``, ``classes``, ``preprocessing``,
``inceptionctl_version``) beside its ``format``/``format_version``. An engine's sidecar
(``model.engine.json``, :func:`write_sidecar`) holds them too, as plain JSON values under the same
names (``recipe``, ``classes``, ``preprocessing``, ``precision``, ``batch``), plus the build facts
of its backend, and the source ONNX's ``metadata_props`` verbatim. Backends read these facts only
through this module (:func:`read_metadata`, :func:`read_onnx_metadata`, :func:`read_sidecar`).
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InceptionError, one_line
from .files import atomic_path, write_text_atomic
from .recipe import Recipe, parse_batch_range

FORMAT = "inceptionctl.onnx"
FORMAT_VERSION = 1
KEY = "inceptionctl."
REQUIRED = ("recipe", "classes", "preprocessing", "precision", "batch")

RUN_FILES = ("best.pt", "last.pt")  # what a run folder means, in order
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ONNX_SUFFIX = ".onnx"
FOREIGN_MAX_BATCH = 1 << 16  # a foreign ONNX declares no batch range; its graph may fix one


class Kind(str, enum.Enum):
    """The kinds of artifact; the value is what ``ArtifactInfo.kind`` says."""

    RUN = "run"                 # a run folder (its best.pt, else last.pt)
    CHECKPOINT = "checkpoint"   # our checkpoint
    FOREIGN = "foreign"         # foreign weights, with a recipe naming their architecture
    ONNX = "onnx"               # an exported ONNX model
    ENGINE = "engine"           # an engine a backend built from an ONNX


TORCHVISION_PREFIX = "torchvision:"
# name -> (weights enum in torchvision.models, its entry, the recipe that builds the architecture)
TORCHVISION_WEIGHTS = {"googlenet": ("GoogLeNet_Weights", "IMAGENET1K_V1", "googlenet-bn")}


def resolve_artifact(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else last); ``torchvision:NAME`` its file in the
    torch hub cache (fetched when missing); anything else must exist."""
    if is_torchvision(path):
        return torchvision_artifact(str(path))[0]
    p = Path(path)
    if p.is_dir():
        for name in RUN_FILES:
            if (p / name).is_file():
                return p / name
        raise InceptionError(f"{p}: a folder without best.pt or last.pt (not a run folder)")
    if not p.exists():
        raise InceptionError(f"{p}: no such file")
    return p


def resolve_with_recipe(path: str | Path, recipe: Recipe | None = None
                        ) -> tuple[Path, Recipe | None]:
    """:func:`resolve_artifact`, with the recipe that opens it: ``recipe`` when given, else the
    one a ``torchvision:NAME`` artifact implies (None for artifacts that carry their own)."""
    if is_torchvision(path):
        file, implied = torchvision_artifact(str(path))
        return file, recipe if recipe is not None else implied
    return resolve_artifact(path), recipe


# ------------------------------------------------------------------------ torchvision:NAME

def is_torchvision(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).startswith(TORCHVISION_PREFIX)


def _torchvision_weights(spec: str) -> tuple[Any, str]:
    """torchvision's weights entry for ``torchvision:NAME``, and the recipe of its architecture."""
    name = spec[len(TORCHVISION_PREFIX):]
    if name not in TORCHVISION_WEIGHTS:
        raise InceptionError(f"{spec}: unknown torchvision weights (known: "
                             f"{', '.join(TORCHVISION_PREFIX + n for n in TORCHVISION_WEIGHTS)})")
    enum_name, entry, recipe = TORCHVISION_WEIGHTS[name]
    try:
        import torchvision.models as tvm
    except ImportError:
        raise InceptionError(f"{spec}: needs torchvision (pip install torchvision)") from None
    return getattr(getattr(tvm, enum_name), entry), recipe


def download_torchvision_weights(weights: Any) -> None:
    """Fetch ``weights`` into the torch hub cache through torchvision's own API: its progress
    bar, and the hash check of the file name's sha256 prefix. torch.hub says ``Downloading:``
    on stdout; that goes to stderr, so a ``--json`` document on stdout stays one document."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):
        weights.get_state_dict(progress=True, check_hash=True)


def torchvision_artifact(spec: str) -> tuple[Path, Recipe]:
    """``torchvision:NAME`` -> (its weights file in the torch hub cache, fetched when missing;
    the recipe that builds it, with the class names of the weights' metadata)."""
    from .recipe import load_recipe

    weights, recipe_name = _torchvision_weights(spec)
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    filename = weights.url.rsplit("/", 1)[-1]
    path = folder / filename
    if not path.is_file():
        try:
            download_torchvision_weights(weights)
        except Exception as exc:  # offline, refused, or a bad hash: the same fix, said in one line
            raise InceptionError(f"{spec}: cannot fetch {filename} from {weights.url} "
                                 f"({one_line(exc, 120)}); offline, put that file in "
                                 f"{folder}") from None
        if not path.is_file():
            raise InceptionError(f"{spec}: {filename} is not in {folder} after the download")
    categories = list(weights.meta.get("categories") or [])
    overrides = {"data.classes": categories} if categories else None
    return path, load_recipe(recipe_name, overrides)


# ------------------------------------------------------------------------------------- facts

def preprocessing(recipe: Recipe) -> dict[str, Any]:
    """What an image must go through before the model: the facts every artifact carries."""
    d = recipe.data
    return {"input_size": d.input_size, "resize": d.resize, "mean": list(d.mean),
            "std": list(d.std), "interpolation": d.interpolation, "channels": recipe.model.in_channels,
            "eval_size": recipe.eval.size, "eval_scales": list(recipe.eval.scales)}


def class_names(recipe: Recipe) -> list[str]:
    """Class names from the recipe, or '0'..'N-1' when it names none."""
    if recipe.data.classes is not None:
        return list(recipe.data.classes)
    return [str(i) for i in range(recipe.model.num_classes)]


def check_format_version(version: Any, supported: int, path: str | os.PathLike, what: str,
                         hint: str = "upgrade inceptionctl") -> None:
    """The one rule of every carrier: refuse a ``format_version`` newer than ``supported``."""
    text = str(version).strip()
    if not text.isdigit() or int(text) > supported:
        raise InceptionError(f"{path}: {what} format {version} is newer than this inceptionctl "
                             f"understands ({supported}); {hint}")


def parse_batch_profile(value: Any) -> tuple[int, int, int]:
    """``(min, opt, max)`` from ``"MIN:OPT:MAX"``, ``"N"``, ``N`` or a 3-sequence of ints."""
    if isinstance(value, str):
        return parse_batch_range(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_batch_range(str(value))
    if isinstance(value, Sequence) and len(value) == 3 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        lo, opt, hi = (int(v) for v in value)
        if 1 <= lo <= opt <= hi:
            return lo, opt, hi
    raise InceptionError(f"batch range: expected MIN:OPT:MAX (or three integers) with "
                         f"1 <= MIN <= OPT <= MAX, got {value!r}")


# --------------------------------------------------------------------------- ONNX metadata

def metadata_props(recipe: Recipe, classes: list[str], preprocessing: Mapping[str, Any],
                   precision: str, batch: tuple[int, int, int],
                   source: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (keys in the module docstring)."""
    from . import __version__

    return {
        KEY + "format": FORMAT,
        KEY + "format_version": str(FORMAT_VERSION),
        KEY + "version": __version__,
        KEY + "recipe": json.dumps(recipe.to_dict()),
        KEY + "classes": json.dumps(list(classes)),
        KEY + "preprocessing": json.dumps(dict(preprocessing)),
        KEY + "precision": precision,
        KEY + "batch": "{}:{}:{}".format(*batch),
        KEY + "source": json.dumps(dict(source or {}), default=str),
    }


def precision_props(precision: str) -> dict[str, str]:
    """The metadata that says an ONNX's precision (over its fp32 source's)."""
    return {KEY + "precision": precision}


def int8_props(settings: Mapping[str, Any]) -> dict[str, str]:
    """The metadata an INT8 ONNX adds to its fp32 source's: its precision and how it was made."""
    return {KEY + "precision": "int8", KEY + "int8": json.dumps(dict(settings))}


def _structured(text: str) -> Any:
    """A structured value: JSON (what we write); YAML, a superset, for recipes written as YAML.
    Never code: ``yaml.safe_load``."""
    try:
        return json.loads(text)
    except ValueError:
        import yaml

        return yaml.safe_load(text)


def read_metadata(props: Mapping[str, str], path: str | os.PathLike) -> dict[str, Any]:
    """Our facts from an ONNX model's ``metadata_props``; one clear line when they are not there.

    Returns recipe (dict), classes (list), preprocessing (dict), precision, batch ((min, opt,
    max)), version, source (dict) and int8 (dict or None).
    """
    missing = [k for k in REQUIRED if KEY + k not in props]
    if len(missing) == len(REQUIRED) or props.get(KEY + "format", FORMAT) != FORMAT:
        raise InceptionError(f"{path}: not an inceptionctl model (its ONNX metadata has none of "
                             f"{', '.join(KEY + k for k in REQUIRED)}); for a classifier from "
                             f"elsewhere, name its preprocessing and classes with --recipe "
                             f"NAME|YAML|RUN/recipe.yaml")
    if missing:
        raise InceptionError(f"{path}: incomplete inceptionctl metadata: missing "
                             f"{', '.join(KEY + k for k in missing)}")
    check_format_version(props.get(KEY + "format_version", str(FORMAT_VERSION)), FORMAT_VERSION,
                         path, "metadata")

    def load(key: str, kind: type) -> Any:
        try:
            value = _structured(props[KEY + key])
        except Exception as exc:  # any parse failure is the file's, said in one line
            raise InceptionError(f"{path}: metadata {KEY + key} is not valid JSON "
                                 f"({one_line(exc, 120)})") from None
        if not isinstance(value, kind):
            raise InceptionError(f"{path}: metadata {KEY + key} should be a JSON "
                                 f"{'object' if kind is dict else 'list'}, got "
                                 f"{type(value).__name__}")
        return value

    recipe, classes, pre = load("recipe", dict), load("classes", list), load("preprocessing", dict)
    lacking = [k for k in ("eval_size", "eval_scales", "mean", "std") if k not in pre]
    if lacking:
        raise InceptionError(f"{path}: metadata {KEY}preprocessing lacks {', '.join(lacking)}")
    batch = parse_batch_range(props[KEY + "batch"], lambda msg: InceptionError(
        f"{path}: metadata {KEY}batch: {msg}"))
    return {"recipe": recipe, "classes": [str(c) for c in classes], "preprocessing": pre,
            "precision": props[KEY + "precision"], "batch": batch,
            "version": props.get(KEY + "version"),
            "source": load("source", dict) if KEY + "source" in props else {},
            "int8": load("int8", dict) if KEY + "int8" in props else None}


def _load_onnx(path: str | os.PathLike) -> Any:
    """The ONNX model at ``path`` (external weights not loaded); a clear error if unreadable."""
    import onnx

    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise InceptionError(f"{path}: empty file, not an ONNX model")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InceptionError(f"{path}: not a readable ONNX model ({one_line(exc, 200)})") from None


def read_props(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights not loaded); a clear error if unreadable."""
    return {p.key: p.value for p in _load_onnx(path).metadata_props}


# Ops that compute in (or convert to) 8-bit integers: the QDQ form and the QOperator form.
_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
             "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearConcat"}


def graph_precision(model: Any) -> str:
    """What an ONNX graph computes in, from the graph alone: ``int8`` where it quantizes,
    ``fp16`` where its weights are float16 (or bfloat16), else ``fp32``."""
    from onnx import TensorProto

    if any(node.op_type in _INT8_OPS for node in model.graph.node):
        return "int8"
    halves = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    if any(t.data_type in halves for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def read_onnx_metadata(path: str | os.PathLike, recipe: Recipe | None = None
                       ) -> dict[str, Any]:
    """:func:`read_metadata` of an ONNX file: our facts, or one line saying why not.

    A foreign ONNX (no metadata of ours) takes its facts from ``recipe`` when one is given
    (:func:`foreign_onnx_metadata`), and its precision from its graph; our own exports always
    speak for themselves.
    """
    model = _load_onnx(path)
    props = {p.key: p.value for p in model.metadata_props}
    if recipe is not None and not any(k.startswith(KEY) for k in props):
        return foreign_onnx_metadata(recipe, graph_precision(model))
    return read_metadata(props, path)


def foreign_onnx_metadata(recipe: Recipe, precision: str = "fp32") -> dict[str, Any]:
    """The facts of an ONNX classifier from elsewhere, as :func:`read_metadata` gives ours:
    preprocessing and classes from ``recipe``; ``precision`` (what its graph computes in), any
    batch (the graph says the rest)."""
    return {"recipe": recipe.to_dict(), "classes": class_names(recipe),
            "preprocessing": preprocessing(recipe), "precision": precision,
            "batch": (1, recipe.eval.batch_size, FOREIGN_MAX_BATCH), "version": None,
            "source": {"kind": "foreign", "recipe": recipe.source}, "int8": None,
            "recipe_used": True}


def write_onnx(model: Any, preprocessing: Mapping[str, Any], batch: tuple[int, int, int],
               opset: int, props: Mapping[str, str], out: str | os.PathLike,
               doc: str = "", *, float16: bool = False) -> Path:
    """Export ``model`` to ``out`` (atomically): input ``images`` with a dynamic batch axis,
    output ``logits``, ``props`` as metadata; ``onnx.checker`` full check before writing.
    ``float16``: the graph in fp16 with float32 input and output (:func:`float16_graph`)."""
    import onnx
    import torch

    size, channels = int(preprocessing["eval_size"]), int(preprocessing.get("channels", 3))
    dummy = torch.zeros(batch[1], channels, size, size)
    with tempfile.TemporaryDirectory(prefix="inceptionctl-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
                torch.onnx.export(model, (dummy,), str(raw), input_names=["images"],
                                  output_names=["logits"], opset_version=opset,
                                  dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                                  do_constant_folding=True, dynamo=False)
        except Exception as exc:
            first = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise InceptionError(f"ONNX export (opset {opset}) failed: {first}") from None
        graph = onnx.load(str(raw))
    if float16:
        graph = float16_graph(graph)
    unfold_lrn(graph)
    graph.doc_string = doc
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, dict(props))
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as exc:
        raise InceptionError(f"the exported graph fails onnx.checker: "
                             f"{' '.join(str(exc).split())[:200]}") from None
    out = Path(out)
    try:
        with atomic_path(out) as tmp_out:
            onnx.save(graph, str(tmp_out))
    except OSError as exc:
        raise InceptionError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return out


# ------------------------------------------------------------------------------ LRN graphs

# The nodes :func:`unfold_lrn` writes are named ``<LRN node>:lrn_<step>``. fp16 graphs keep
# every step before ``normalize`` (``x * p``) in fp32: ``x * x`` passes fp16's 65504 at
# |x| > 256. INT8 keeps the power (``p = s^-beta``) in fp32 and quantizes the rest like any
# Mul or Conv, which keeps the layers around LRN on ONNX Runtime's NHWC INT8 kernels (2.4x the
# fp32 file on the paper recipe, against 1.4x with squares and window in fp32). Where activations
# stay moderate the LRN term ``alpha / size * window(x * x)`` is small next to ``k`` and its
# 8-bit error is lost in the output's; with activations in the hundreds the squares' 8-bit steps
# show (a Conv-ReLU-LRN layer: max error 4.4% of the output range against 2.7% with LRN in
# fp32). The export's parity check measures it for each model.
LRN_STEP = ":lrn_"
LRN_FP32_STEPS = frozenset({"square", "window", "sqrt", "sqrt2", "power"})
LRN_INT8_FLOAT_STEPS = frozenset({"sqrt", "sqrt2", "power"})


def lrn_step(node: Any) -> str:
    """Which step of an unfolded LRN ``node`` is (``square``, ``window``, ``sqrt``, ``sqrt2``,
    ``power``, ``normalize``), or ``""`` for any other node."""
    head, sep, step = node.name.rpartition(LRN_STEP)
    return step if head and sep and step in LRN_FP32_STEPS | {"normalize"} else ""


def unfold_lrn(model: Any) -> int:
    """Replace each ONNX ``LRN`` node of ``model`` with a float32 NCHW input of known channel
    count by the same formula in plain ops, in place; returns how many (others stay LRN ops).

    ``s = k + alpha / size * window(x * x)`` is a 1x1 convolution with the banded
    ``alpha / size`` weights and bias ``k``, then ``p = s^-beta`` (``sqrt(sqrt(s)) / s`` for
    the paper's 0.75) and ``y = x * p``. ONNX Runtime's CPU ``LRN`` kernel is a scalar loop: on
    the paper recipe at batch 8 it took 53% of the fp32 run, and the unfolded graph ran 1.9x as
    fast, its INT8 4.0x (2-core AMD EPYC, ONNX Runtime 1.32). Every runtime reads these ops.
    The steps are fp32 like the ``LRN`` they replace (in an fp16 graph, its input is already
    cast to fp32); :func:`lrn_step` names each.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    if not any(n.op_type == "LRN" for n in g.node):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: v.type.tensor_type for v in
              list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    taken = {n.name for n in g.node} | {t.name for t in g.initializer} | \
        {o for n in g.node for o in n.output}
    nodes, unfolded = [], 0
    for node in g.node:
        x_type = shapes.get(node.input[0]) if node.op_type == "LRN" else None
        dims = list(x_type.shape.dim) if x_type is not None else []
        # left as the LRN op it is (which runs everywhere): anything but a float32 NCHW input
        # with a known channel count
        if x_type is None or x_type.elem_type != TensorProto.FLOAT or len(dims) != 4 \
                or dims[1].dim_value <= 0:
            nodes.append(node)
            continue
        channels = dims[1].dim_value
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        size, alpha = int(attrs["size"]), float(attrs.get("alpha", 1e-4))
        beta, bias = float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
        band = np.zeros((channels, channels, 1, 1), np.float32)
        for c in range(channels):
            band[c, max(0, c - (size - 1) // 2):min(channels, c + size // 2 + 1)] = alpha / size
        stem, n = node.name or node.output[0], 1
        while any(name.startswith(f"{stem}{LRN_STEP}") for name in taken):
            stem, n = f"{node.name or node.output[0]}_{n}", n + 1  # two LRNs of one name
        base = f"{stem}{LRN_STEP}"
        taken.add(base)
        x, y = node.input[0], node.output[0]
        g.initializer.extend([numpy_helper.from_array(band, base + "window_w"),
                              numpy_helper.from_array(np.full(channels, bias, np.float32),
                                                      base + "window_b")])

        def step(op: str, name: str, inputs: list[str], **kw: Any) -> str:
            nodes.append(helper.make_node(op, inputs, [base + name], name=base + name, **kw))
            return base + name

        s = step("Conv", "window", [step("Mul", "square", [x, x]), base + "window_w",
                                    base + "window_b"], kernel_shape=[1, 1])
        if beta == 0.75:  # s^(1/4) / s, without Pow (a scalar loop in ONNX Runtime)
            p = step("Div", "power", [step("Sqrt", "sqrt2", [step("Sqrt", "sqrt", [s])]), s])
        else:
            g.initializer.append(numpy_helper.from_array(np.array(-beta, np.float32),
                                                         base + "beta"))
            p = step("Pow", "power", [s, base + "beta"])
        nodes.append(helper.make_node("Mul", [x, p], [y], name=base + "normalize"))
        unfolded += 1
    del g.node[:]
    g.node.extend(nodes)
    return unfolded


# ------------------------------------------------------------------------------ fp16 graphs

# Kept in fp32 inside an fp16 graph: LRN squares its input (x*x passes fp16's 65504 at |x| > 256),
# softmax exponentiates, and reductions sum many terms; each costs little next to the convolutions.
FP32_OPS = frozenset({"LRN", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceL2",
                      "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd", "Cast"})


def float16_graph(model: Any) -> Any:
    """An fp16 copy of the float ONNX ``model``: weights and activations in float16, except the
    ops of :data:`FP32_OPS`, with Cast nodes at every boundary; its inputs and outputs stay
    float32, so callers feed and read it exactly like the fp32 graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    half: set[str] = set()            # float tensors that are fp16 in the new graph
    casts: dict[tuple[str, int], str] = {}
    nodes: list[Any] = []

    def cast(name: str, to: int) -> str:
        """``name`` as ``to`` (float16 or float32): a converted initializer or a Cast node."""
        key = (name, to)
        if key not in casts:
            new = f"{name}.{'fp16' if to == HALF else 'fp32'}"
            if name in inits and to == HALF:
                arr = numpy_helper.to_array(inits[name]).astype("float16")
                g.initializer.append(numpy_helper.from_array(arr, new))
            else:
                nodes.append(helper.make_node("Cast", [name], [new], to=to, name=f"cast:{new}"))
            casts[key] = new
        return casts[key]

    for node in g.node:
        fp16 = node.op_type not in FP32_OPS and lrn_step(node) not in LRN_FP32_STEPS
        for i, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            if fp16 and name not in half:
                node.input[i] = cast(name, HALF)
            elif not fp16 and name in half:
                node.input[i] = cast(name, FLOAT)
        if fp16:
            _constant_to_fp16(node)
            half.update(o for o in node.output if types.get(o) == FLOAT)
        nodes.append(node)
    for out in g.output:  # the graph's outputs stay float32
        if out.name in half:
            inner = f"{out.name}.fp16"
            for node in nodes:
                node.output[:] = [inner if o == out.name else o for o in node.output]
                node.input[:] = [inner if i == out.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT,
                                          name=f"cast:{out.name}"))
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:], g.node[:], g.value_info[:]
    g.initializer.extend(keep)
    g.node.extend(nodes)
    return onnx.shape_inference.infer_shapes(model)


def write_float16_copy(src: str | os.PathLike, out: str | os.PathLike,
                       props: Mapping[str, str]) -> Path:
    """``out``: the fp16 copy of the float ONNX ``src`` (:func:`float16_graph`), its metadata
    updated by ``props``; written atomically after ``onnx.checker``."""
    import onnx

    graph = float16_graph(onnx.load(str(src)))
    unfold_lrn(graph)  # a file written before LRN was unfolded
    merged = {p.key: p.value for p in graph.metadata_props}
    merged.update(props)
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, merged)
    onnx.checker.check_model(graph, full_check=True)
    out = Path(out)
    with atomic_path(out) as tmp:
        onnx.save(graph, str(tmp))
    return out


def _constant_to_fp16(node: Any) -> None:
    """A float32 ``Constant`` node's value, in float16 (other nodes are left as they are)."""
    from onnx import TensorProto, numpy_helper

    if node.op_type != "Constant":
        return
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(attr.t).astype("float16")
            attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))


# --------------------------------------------------------------------------------- sidecars

def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: str | os.PathLike, fmt: str, version: int,
                  data: Mapping[str, Any]) -> Path:
    """Write the sidecar of ``artifact`` (``format``, ``format_version``, then ``data``)
    atomically; returns its path."""
    body = {"format": fmt, "format_version": version, **data}
    path = sidecar_path(artifact)
    write_text_atomic(path, json.dumps(body, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_sidecar(artifact: str | os.PathLike, fmt: str, version: int, *, kind: str,
                 required: Mapping[str, type], rebuild: str) -> dict[str, Any]:
    """The sidecar of ``artifact``, checked: its format and version, the ``required`` keys and
    their types, the batch range (as a list); one clear error naming the file when unusable.

    ``kind`` names the engine in messages ("TensorRT"); ``rebuild`` says how to make a new one.
    """
    path = sidecar_path(artifact)
    if not path.is_file():
        raise InceptionError(f"{path}: missing (every {kind} engine needs its sidecar with the "
                             f"recipe, classes and build facts); {rebuild}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InceptionError(f"{path}: corrupt {kind} sidecar ({one_line(exc)}); "
                             f"{rebuild}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise InceptionError(f"{path}: not an inceptionctl {kind} sidecar (no "
                             f"\"format\": \"{fmt}\"); {rebuild}")
    check_format_version(data.get("format_version", 0), version, path, "sidecar",
                         "upgrade it")
    for key, typ in required.items():
        if not isinstance(data.get(key), typ):
            raise InceptionError(f"{path}: corrupt {kind} sidecar ('{key}' missing or not a "
                                 f"{typ.__name__}); {rebuild}")
    if "batch" in data:
        try:
            data["batch"] = list(parse_batch_profile(data["batch"]))
        except InceptionError as exc:
            raise InceptionError(f"{path}: corrupt {kind} sidecar ({exc}); {rebuild}") from None
    return data


def sidecar_facts(side: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The facts an engine's sidecar carries, from its source ONNX's :func:`read_metadata`
    (``metadata``): recipe, classes, preprocessing and the source ONNX's own facts."""
    return {"recipe": metadata["recipe"], "classes": metadata["classes"],
            "preprocessing": metadata["preprocessing"],
            "source_onnx": {"precision": metadata["precision"],
                            "batch": list(metadata["batch"]),
                            "inceptionctl_version": metadata["version"],
                            "source": metadata["source"], "int8": metadata["int8"], **side}}
