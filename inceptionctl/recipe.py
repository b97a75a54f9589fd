"""YAML recipe -> frozen, typed :class:`Recipe`; every validation rule and its message lives here.

A recipe is data, not code: it is read with YAML's safe constructor (no Python tags), checked
against the dataclasses below, then against the rules of the architecture (widths, names, the
geometry of the feature maps). Every mistake raises :class:`RecipeError`, whose text is one line:
``FILE:LINE: dotted.key: what was expected (did you mean ...?)``. A key renamed or removed
since a recipe or artifact was written is read through :data:`KEY_CHANGES`, with a one-line note.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import InceptionError, one_line
from .files import known_kind
from .geometry import geometry_problem, smallest_input_size

Path_ = tuple[Union[str, int], ...]


class RecipeError(InceptionError):
    """A recipe (file or ``--set`` override) that cannot be used; the text is one line."""


# --------------------------------------------------------------------------------------------
# The schema. Field metadata "key" gives the YAML spelling where it is not a Python identifier.
# --------------------------------------------------------------------------------------------

POOL_TYPES = ("max", "avg")
STEM_LAYERS = ("conv", "maxpool", "avgpool")
NORMS = ("lrn", "batchnorm", "none")
INITS = ("torchvision", "xavier")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


@dataclass(frozen=True, kw_only=True)
class PoolSpec:
    """A pooling layer: fixed ``kernel``/``stride``/``padding``, or adaptive to ``output_size``."""

    type: Literal["max", "avg"] = "max"
    kernel: int | None = None
    stride: int | None = None
    padding: int = 0
    output_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class StemLayer:
    """One layer of the stem; ``layer`` picks it from the registry (conv, maxpool, avgpool)."""

    name: str
    layer: Literal["conv", "maxpool", "avgpool"]
    out: int | None = None
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True, kw_only=True)
class InceptionWidths:
    """Table 1's six columns for one Inception module."""

    n1x1: int = field(metadata={"key": "1x1"})
    n3x3_reduce: int = field(metadata={"key": "3x3_reduce"})
    n3x3: int = field(metadata={"key": "3x3"})
    n5x5_reduce: int = field(metadata={"key": "5x5_reduce"})
    n5x5: int = field(metadata={"key": "5x5"})
    pool_proj: int = field(metadata={"key": "pool_proj"})

    @property
    def out_channels(self) -> int:
        return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_proj


@dataclass(frozen=True, kw_only=True)
class Stage:
    """Inception modules run in order (named as in Table 1: 3a, 3b, ...), then an optional pool."""

    modules: dict[str, InceptionWidths]
    pool: PoolSpec | None = None


@dataclass(frozen=True, kw_only=True)
class LRNSpec:
    """Local response normalisation (Caffe/BVLC semantics: alpha is divided by size)."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    after: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class AuxSpec:
    """Auxiliary classifiers: one head after each module named in ``after``."""

    after: tuple[str, ...] = ()
    pool: PoolSpec = PoolSpec(type="avg", kernel=5, stride=3)
    conv: int = 128
    fc: int = 1024
    dropout: float = 0.7
    loss_weight: float = 0.3


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """The classifier: pool, dropout, linear."""

    pool: PoolSpec = PoolSpec(type="avg", output_size=1)
    dropout: float = 0.4


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    num_classes: int = 1000
    in_channels: int = 3
    width_multiplier: float = 1.0
    norm: Literal["lrn", "batchnorm", "none"] = "batchnorm"
    bn_eps: float = 1e-3
    conv_bias: bool = False
    branch5x5_kernel: int = field(default=5, metadata={"key": "5x5_kernel"})
    ceil_mode: bool = True
    init: Literal["torchvision", "xavier"] = "torchvision"
    lrn: LRNSpec = LRNSpec()
    stem: tuple[StemLayer, ...]
    stages: tuple[Stage, ...]
    aux: AuxSpec = AuxSpec()
    head: HeadSpec = HeadSpec()

    def width(self, channels: int) -> int:
        """Channel count after the width multiplier (at least 1)."""
        return max(1, int(round(channels * self.width_multiplier)))

    @property
    def modules(self) -> dict[str, InceptionWidths]:
        """Every Inception module by name, in network order."""
        return {name: w for stage in self.stages for name, w in stage.modules.items()}


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    input_size: int = 224
    resize: int = 256
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Training settings (the paper's by default); read by ``inceptionctl train``."""

    epochs: int = 90
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False  # sgd only
    weight_decay: float = 2e-4  # decoupled for adamw, added to the gradient for sgd and rmsprop
    betas: tuple[float, ...] = (0.9, 0.999)  # adamw
    eps: float | None = None  # null: the optimizer's own (adamw 1e-8; rmsprop 1.0, as Inception-v3)
    rmsprop_decay: float = 0.9  # rmsprop's average of squared gradients (torch's alpha)
    schedule: Literal["step", "cosine", "poly"] = "step"
    step_epochs: int = 8
    gamma: float = 0.96
    poly_power: float = 0.5
    warmup_epochs: float = 0.0
    ema_decay: float | None = 0.9999
    label_smoothing: float = 0.0
    scale: tuple[float, ...] = (0.08, 1.0)
    ratio: tuple[float, ...] = (0.75, 4.0 / 3.0)
    random_interpolation: bool = True
    hflip: float = 0.5
    color_jitter: float = 0.4
    lighting: float = 0.1
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """Test-time crops: ``size`` and the shorter-side ``scales`` of the 144-crop protocol."""

    size: int = 224
    scales: tuple[int, ...] = (256, 288, 320, 352)
    crops: int = 1
    batch_size: int = 64


@dataclass(frozen=True, kw_only=True)
class ExportSpec:
    opset: int = 17
    batch: str = "1:8:32"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    description: str = ""
    model: ModelSpec
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    export: ExportSpec = ExportSpec()
    source: str = field(default="<memory>", metadata={"internal": True}, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (YAML spellings, lists), as saved in artifacts."""
        return to_data(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100,
                              allow_unicode=True)


# --------------------------------------------------------------------------------------------
# Loading: YAML text -> plain data with line numbers -> typed recipe -> rules
# --------------------------------------------------------------------------------------------


def _fmt_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else _type_name(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Context:
    """Where values came from: a file with line numbers, and ``--set`` overrides."""

    def __init__(self, source: str, lines: dict[Path_, int] | None = None):
        self.source = source
        self.lines = lines or {}
        self.overrides: dict[Path_, str] = {}

    def where(self, path: Path_) -> str:
        """``--set KEY=VALUE`` when an override gave ``path``, else its file and line."""
        for opath, text in self.overrides.items():
            if path[: len(opath)] == opath:
                return f"--set {text}"
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return f"{self.source}:{self.lines[path[:cut]]}"
        return self.source

    def error(self, path: Path_, message: str, depends: tuple[Path_, ...] = ()) -> RecipeError:
        """The error at ``path``. A check against other keys (``depends``) that a ``--set``
        changed names that ``--set`` first, and ``path``'s own place beside the key: the value
        at ``path`` did not change, the override made it wrong."""
        where = self.where(path)
        if not where.startswith("--set "):
            for dep in depends:
                for opath, text in self.overrides.items():
                    if opath[: len(dep)] == dep or dep[: len(opath)] == opath:
                        return RecipeError(f"--set {text}: {_fmt_path(path)} ({where}): "
                                           f"{message}")
        return RecipeError(f"{where}: {_fmt_path(path)}: {message}")


def _yaml_error(source: str, exc: yaml.YAMLError) -> RecipeError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or one_line(exc)
    return RecipeError(f"{where}: invalid YAML: {problem}")


_PLAIN_TAGS = (yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
               yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG)


def _compose(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML safely into plain data, remembering the line of every key."""
    too_deep = RecipeError(f"{source}: invalid YAML: nested too deeply (a recipe is a few "
                           f"levels of plain data)")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    except RecursionError:
        raise too_deep from None
    lines: dict[Path_, int] = {}
    constructor = yaml.constructor.SafeConstructor()
    inside: set[int] = set()  # the nodes being walked: an alias back to one of them is a cycle

    def walk(node: yaml.Node, path: Path_) -> Any:
        if id(node) in inside:
            raise RecipeError(f"{source}:{node.start_mark.line + 1}: invalid YAML: an alias "
                              f"refers to the node that contains it")
        inside.add(id(node))
        try:
            return walk_node(node, path)
        finally:
            inside.discard(id(node))

    def walk_node(node: yaml.Node, path: Path_) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise RecipeError(f"{source}:{node.start_mark.line + 1}: invalid YAML: tag "
                              f"'{node.tag}' is not allowed (a recipe is plain data)")
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = walk(key_node, path + ("<key>",))
                if isinstance(key, (dict, list)):
                    raise RecipeError(f"{source}:{key_node.start_mark.line + 1}: "
                                      f"{_fmt_path(path)}: a key must be a plain word")
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    raise RecipeError(f"{source}:{key_node.start_mark.line + 1}: "
                                      f"{_fmt_path(path + (key,))}: duplicate key")
                lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = walk(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise _yaml_error(source, exc) from None

    try:
        data = walk(root, ()) if root is not None else None
    except RecursionError:
        raise too_deep from None
    lines.pop((), None)
    return data, lines


def _field_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _public_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _convert_dataclass(tp: Any, value: Any, path: Path_, ctx: _Context) -> Any:
    """Build the dataclass ``tp`` from a mapping: no unknown keys, every required key given."""
    if not isinstance(value, dict):
        raise ctx.error(path, f"expected a mapping, got {_show(value)}")
    fields = _public_fields(tp)
    by_key = {_field_key(f): f for f in fields}
    for key in value:
        if key not in by_key:
            hint = difflib.get_close_matches(str(key), list(by_key), n=1, cutoff=0.6)
            msg = f"unknown key '{key}' (expected one of: {', '.join(by_key)})"
            if hint:
                msg = f"unknown key '{key}' (did you mean '{hint[0]}'?)"
            raise ctx.error(path + (key,), msg)
    hints = typing.get_type_hints(tp)
    kwargs = {}
    for f in fields:
        key = _field_key(f)
        if key in value:
            kwargs[f.name] = _convert(hints[f.name], value[key], path + (key,), ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.error(path + (key,), "missing required key")
    return tp(**kwargs)


def _convert(tp: Any, value: Any, path: Path_, ctx: _Context) -> Any:
    """Check ``value`` against the type ``tp`` and build it; raise a located error if it does not fit."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, ctx)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        return _convert(real[0], value, path, ctx)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ctx.error(path, f"expected one of {', '.join(map(str, choices))}, "
                                  f"got {_show(value)}{extra}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ctx.error(path, f"expected a list, got {_show(value)}")
        return tuple(_convert(item_type, v, path + (i,), ctx) for i, v in enumerate(value))
    if origin is dict:
        _key_type, item_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a mapping, got {_show(value)}")
        return {str(k): _convert(item_type, v, path + (k,), ctx) for k, v in value.items()}
    return _convert_scalar(tp, value, path, ctx)


_YAML11_EXPONENT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _convert_scalar(tp: Any, value: Any, path: Path_, ctx: _Context) -> Any:
    """A bool, int, float or str, checked strictly: YAML's 1 is not true, and true is not 1."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.error(path, f"expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.error(path, f"expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_EXPONENT.match(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; it is a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(path, f"expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ctx.error(path, f"expected a finite number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ctx.error(path, f"expected a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not user input


def to_data(obj: Any) -> Any:
    """Typed recipe (or part of one) -> plain YAML-ready data."""
    if dataclasses.is_dataclass(obj):
        return {_field_key(f): to_data(getattr(obj, f.name)) for f in _public_fields(type(obj))}
    if isinstance(obj, (tuple, list)):
        return [to_data(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# Migrations: renamed and removed keys, so older recipes and artifacts still load
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyChange:
    """A recipe key that was renamed (``new``) or removed (``new=None``) in version ``since``.

    ``old`` and ``new`` are dotted keys as written in YAML, each ending in a mapping key; a ``*``
    part stands for any list index or mapping key (``model.stages.*.modules.*.1x1``) and names
    the same item on both sides.
    """

    old: str
    new: str | None
    since: str
    why: str = ""


# Applied in order, so a key renamed twice migrates through both steps. An entry stays for good:
# checkpoints, exported models and run folders written before the change still carry the old key.
KEY_CHANGES: tuple[KeyChange, ...] = ()


def _find(data: Any, pattern: list[str]) -> list[tuple[Path_, list[Union[str, int]]]]:
    """Every path in ``data`` that ``pattern`` names, with what each of its ``*`` stood for."""
    hits: list[tuple[Path_, list[Union[str, int]], Any]] = [((), [], data)]
    for part in pattern:
        found: list[tuple[Path_, list[Union[str, int]], Any]] = []
        for path, bound, node in hits:
            items = list(node.items()) if isinstance(node, dict) else \
                list(enumerate(node)) if isinstance(node, list) else []
            for key, value in items:
                if part == "*" or str(key) == part:
                    found.append((path + (key,), bound + [key] if part == "*" else bound, value))
        hits = found
    return [(path, bound) for path, bound, _ in hits]


def _fill(pattern: list[str], bound: list[Union[str, int]]) -> Path_:
    stars = iter(bound)
    return tuple(next(stars) if part == "*" else part for part in pattern)


def _change_note(change: KeyChange, old: str, new: str | None) -> str:
    why = f" ({change.why})" if change.why else ""
    if new is None:
        return f"{old}: removed in inceptionctl {change.since}{why}; ignored"
    return f"{old}: renamed to {new} in inceptionctl {change.since}{why}; read as {new}"


def _holder(data: Any, target: Path_) -> dict | None:
    """The mapping that holds ``target``'s last key (made where missing); None where none can."""
    node = data
    for part in target[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
    return node if isinstance(node, dict) else None


def _apply_change(data: Any, change: KeyChange, ctx: _Context) -> list[str]:
    """Move (or drop) every occurrence of one old key in ``data``, in place; return the notes."""
    notes = []
    for path, bound in _find(data, change.old.split(".")):
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        value = parent.pop(path[-1])
        if change.new is None:
            notes.append(f"{ctx.where(path)}: {_change_note(change, _fmt_path(path), None)}")
            continue
        target = _fill(change.new.split("."), bound)
        notes.append(f"{ctx.where(path)}: "
                     f"{_change_note(change, _fmt_path(path), _fmt_path(target))}")
        holder = _holder(data, target)
        if holder is None:
            raise ctx.error(path, f"renamed to {_fmt_path(target)}, which has no place "
                                  f"in this recipe")
        if target[-1] in holder:
            raise ctx.error(path, f"renamed to {_fmt_path(target)} in inceptionctl "
                                  f"{change.since}, which is given too; keep only the new key")
        holder[target[-1]] = value
        for line_path in [p for p in ctx.lines if p[: len(path)] == path]:
            ctx.lines[target + line_path[len(path):]] = ctx.lines.pop(line_path)
    return notes


def _upgrade(data: Any, ctx: _Context) -> tuple[Any, list[str]]:
    if not any(_find(data, change.old.split(".")) for change in KEY_CHANGES):
        return data, []
    data = copy.deepcopy(data)  # the caller's data (a checkpoint's dict) stays as it was
    notes: list[str] = []
    for change in KEY_CHANGES:
        notes += _apply_change(data, change, ctx)
    return data, notes


def upgrade_recipe_data(data: Any, source: str = "<memory>") -> tuple[Any, list[str]]:
    """``(data in today's spelling, one note per old key)``; ``data`` itself is left unchanged.

    Every key of :data:`KEY_CHANGES` found in plain recipe data (a recipe file, or the recipe an
    artifact carries) moves to its new place or is dropped. The recipe is not validated here.
    """
    return _upgrade(data, _Context(source))


def _upgrade_override(key: str, raw: str) -> tuple[str | None, list[str]]:
    """An override's dotted key in today's spelling (None: removed), and the notes saying so."""
    given, notes = key, []
    for change in KEY_CHANGES:
        pattern, parts = change.old.split("."), key.split(".")
        if len(parts) < len(pattern) or any(p != "*" and p != q for p, q in zip(pattern, parts)):
            continue
        head = ".".join(parts[: len(pattern)])
        if change.new is None:
            return None, notes + [f"--set {given}={raw}: " + _change_note(change, head, None)]
        stars = [q for p, q in zip(pattern, parts) if p == "*"]
        new_head = ".".join(map(str, _fill(change.new.split("."), stars)))
        notes.append(f"--set {given}={raw}: " + _change_note(change, head, new_head))
        key = ".".join([new_head, *parts[len(pattern):]])
    return key, notes


_NOTED: set[str] = set()


def _note(text: str) -> None:
    """One line on stderr, once per process: the same artifact is often read more than once."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"note: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The rules of the architecture
# --------------------------------------------------------------------------------------------


def _check_pool(spec: PoolSpec, path: Path_, ctx: _Context) -> None:
    if (spec.kernel is None) == (spec.output_size is None):
        raise ctx.error(path, "expected exactly one of 'kernel' (fixed window) or "
                              "'output_size' (adaptive)")
    for key in ("kernel", "stride", "output_size"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise ctx.error(path + (key,), f"expected a positive integer, got {value}")
    if spec.padding < 0:
        raise ctx.error(path + ("padding",), f"expected an integer >= 0, got {spec.padding}")
    if spec.output_size is not None and (spec.stride is not None or spec.padding):
        raise ctx.error(path, "an adaptive pool ('output_size') takes no stride or padding")
    if spec.kernel is not None and spec.padding * 2 > spec.kernel:
        raise ctx.error(path + ("padding",), f"padding {spec.padding} is more than half "
                                             f"the kernel {spec.kernel}")


def _positive(value: float, path: Path_, ctx: _Context, what: str = "a positive integer") -> None:
    if value <= 0:
        raise ctx.error(path, f"expected {what}, got {value}")


def _name_hint(name: str, names: list[str]) -> str:
    hint = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(names)})"


def _check_rules(recipe: Recipe, ctx: _Context) -> None:
    """Check the rules of the architecture, section by section, in the order they are read."""
    # the name starts a new run's folder under runs/: one plain path component
    if not recipe.name.strip() or recipe.name.startswith(".") \
            or any(c in recipe.name for c in "/\\\0"):
        raise ctx.error(("name",), f"expected a plain name (it starts a run folder's name: no "
                                   f"slash, not empty, not starting with a dot), got "
                                   f"{recipe.name!r}")
    _check_model(recipe.model, ctx)
    _check_data(recipe.data, recipe.model, ctx)
    _check_train(recipe.train, ctx)
    _check_eval(recipe.eval, recipe.data, ctx)
    _check_export(recipe.export, ctx)


def _check_model(m: ModelSpec, ctx: _Context) -> None:
    P: Path_ = ("model",)
    _positive(m.num_classes, P + ("num_classes",), ctx)
    _positive(m.in_channels, P + ("in_channels",), ctx)
    _positive(m.width_multiplier, P + ("width_multiplier",), ctx, "a positive number")
    _positive(m.bn_eps, P + ("bn_eps",), ctx, "a positive number")
    if m.branch5x5_kernel not in (3, 5):
        raise ctx.error(P + ("5x5_kernel",), f"expected 5 (the paper) or 3 (torchvision), "
                                             f"got {m.branch5x5_kernel}")
    stem_names = _check_stem(m, ctx)
    module_names = _check_stages(m, stem_names, ctx)
    _check_lrn(m, stem_names, ctx)
    _check_heads(m, module_names, ctx)


def _check_stem(m: ModelSpec, ctx: _Context) -> list[str]:
    """Check the stem's layers; return their names, in order."""
    P: Path_ = ("model",)
    if not m.stem:
        raise ctx.error(P + ("stem",), "expected at least one layer")
    stem_names: list[str] = []
    for i, layer in enumerate(m.stem):
        lp = P + ("stem", i)
        if layer.name in stem_names:
            raise ctx.error(lp + ("name",), f"duplicate layer name '{layer.name}'")
        stem_names.append(layer.name)
        _positive(layer.kernel, lp + ("kernel",), ctx)
        _positive(layer.stride, lp + ("stride",), ctx)
        if layer.padding < 0:
            raise ctx.error(lp + ("padding",), f"expected an integer >= 0, got {layer.padding}")
        if layer.layer == "conv":
            if layer.out is None:
                raise ctx.error(lp + ("out",), "missing required key (a conv needs its width)")
            _positive(layer.out, lp + ("out",), ctx)
        elif layer.out is not None:
            raise ctx.error(lp + ("out",), f"a {layer.layer} layer has no width")
    return stem_names


def _check_stages(m: ModelSpec, stem_names: list[str], ctx: _Context) -> list[str]:
    """Check the stages' modules and pools; return the Inception modules' names, in order."""
    P: Path_ = ("model",)
    if not m.stages:
        raise ctx.error(P + ("stages",), "expected at least one stage")
    module_names: list[str] = []
    for s, stage in enumerate(m.stages):
        sp = P + ("stages", s)
        if not stage.modules:
            raise ctx.error(sp + ("modules",), "expected at least one Inception module")
        for name, widths in stage.modules.items():
            if name in module_names or name in stem_names:
                raise ctx.error(sp + ("modules", name), f"duplicate name '{name}'")
            module_names.append(name)
            for f in dataclasses.fields(InceptionWidths):
                _positive(getattr(widths, f.name), sp + ("modules", name, _field_key(f)), ctx)
        if stage.pool is not None:
            _check_pool(stage.pool, sp + ("pool",), ctx)
    return module_names


def _check_lrn(m: ModelSpec, stem_names: list[str], ctx: _Context) -> None:
    P: Path_ = ("model", "lrn")
    if m.norm != "lrn" and m.lrn.after:
        raise ctx.error(P + ("after",), f"LRN layers need model.norm: lrn (it is '{m.norm}')",
                        depends=(("model", "norm"),))
    _positive(m.lrn.size, P + ("size",), ctx)
    for i, name in enumerate(m.lrn.after):
        if name not in stem_names:
            raise ctx.error(P + ("after", i), f"no stem layer named '{name}'"
                                              + _name_hint(name, stem_names))


def _check_heads(m: ModelSpec, module_names: list[str], ctx: _Context) -> None:
    """Check the auxiliary classifiers and the main head."""
    P: Path_ = ("model",)
    aux = m.aux
    for i, name in enumerate(aux.after):
        if name not in module_names:
            raise ctx.error(P + ("aux", "after", i), f"no Inception module named '{name}'"
                                                     + _name_hint(name, module_names))
    if len(set(aux.after)) != len(aux.after):
        raise ctx.error(P + ("aux", "after"), "a module is named twice")
    _check_pool(aux.pool, P + ("aux", "pool"), ctx)
    _check_pool(m.head.pool, P + ("head", "pool"), ctx)
    _positive(aux.conv, P + ("aux", "conv"), ctx)
    _positive(aux.fc, P + ("aux", "fc"), ctx)
    if aux.loss_weight < 0:
        raise ctx.error(P + ("aux", "loss_weight"), f"expected a number >= 0, got {aux.loss_weight}")
    for path, p in ((P + ("aux", "dropout"), aux.dropout), (P + ("head", "dropout"), m.head.dropout)):
        if not 0.0 <= p < 1.0:
            raise ctx.error(path, f"expected a probability in [0, 1), got {p}")


# the model keys that decide the feature maps' sizes (geometry.trace_shapes, geometry_problem)
_GEOMETRY_KEYS: tuple[Path_, ...] = (("model", "stem"), ("model", "stages"), ("model", "ceil_mode"),
                                     ("model", "aux", "after"), ("model", "aux", "pool"),
                                     ("model", "head", "pool"))


def _check_data(d: DataSpec, m: ModelSpec, ctx: _Context) -> None:
    """Check the data section against the model it feeds (channels, classes, smallest input)."""
    D: Path_ = ("data",)
    _positive(d.input_size, D + ("input_size",), ctx)
    _positive(d.resize, D + ("resize",), ctx)
    for key, values in (("mean", d.mean), ("std", d.std)):
        if len(values) != m.in_channels:
            raise ctx.error(D + (key,), f"expected {m.in_channels} values (model.in_channels), "
                                        f"got {len(values)}",
                            depends=(("model", "in_channels"),))
    for i, s in enumerate(d.std):
        _positive(s, D + ("std", i), ctx, "a positive number")
    if d.classes is not None:
        if len(d.classes) != m.num_classes:
            raise ctx.error(D + ("classes",), f"expected {m.num_classes} names "
                                              f"(model.num_classes), got {len(d.classes)}; set data.classes "
                                              f"to match, or to null for '0'..'N-1'",
                            depends=(("model", "num_classes"),))
        if len(set(d.classes)) != len(d.classes):
            raise ctx.error(D + ("classes",), "class names must be unique")
    problem = geometry_problem(m, d.input_size)
    if problem is not None:
        smallest = smallest_input_size(m)
        hint = f"; the smallest valid input is {smallest}" if smallest else ""
        raise ctx.error(D + ("input_size",), f"{d.input_size} is too small for this model: "
                                             f"{problem}{hint}", depends=_GEOMETRY_KEYS)


def _check_train(t: TrainSpec, ctx: _Context) -> None:
    T: Path_ = ("train",)
    for key in ("epochs", "batch_size", "step_epochs"):
        _positive(getattr(t, key), T + (key,), ctx)
    _positive(t.lr, T + ("lr",), ctx, "a positive number")
    if not 0 <= t.seed < 2**32:  # numpy's and torch's seeding take 32 bits
        raise ctx.error(T + ("seed",), f"expected an integer in [0, 2^32), got {t.seed}")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ctx.error(T + ("label_smoothing",), f"expected a value in [0, 1), got {t.label_smoothing}")
    if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
        raise ctx.error(T + ("ema_decay",), f"expected a value in (0, 1) or null, got {t.ema_decay}")
    if not 0.0 <= t.hflip <= 1.0:
        raise ctx.error(T + ("hflip",), f"expected a probability in [0, 1], got {t.hflip}")
    for key in ("color_jitter", "lighting", "weight_decay", "momentum", "warmup_epochs"):
        if getattr(t, key) < 0:
            raise ctx.error(T + (key,), f"expected a number >= 0, got {getattr(t, key)}")
    for key in ("scale", "ratio"):
        pair = getattr(t, key)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ctx.error(T + (key,), f"expected [low, high] with 0 < low <= high, got {list(pair)}")
    _check_optimizer(t, ctx)


def _check_optimizer(t: TrainSpec, ctx: _Context) -> None:
    """The hyper-parameters of ``train.optimizer``; a key another optimizer reads is refused
    where it would silently do nothing (Nesterov outside SGD)."""
    T: Path_ = ("train",)
    if t.nesterov and t.optimizer != "sgd":
        raise ctx.error(T + ("nesterov",), f"only sgd has Nesterov momentum, the optimizer is "
                                           f"{t.optimizer} (add --set train.nesterov=false)",
                        depends=(T + ("optimizer",),))
    if t.nesterov and t.momentum <= 0:
        raise ctx.error(T + ("nesterov",), "Nesterov momentum needs train.momentum > 0",
                        depends=(T + ("momentum",),))
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ctx.error(T + ("betas",), f"expected [beta1, beta2], each in [0, 1), got "
                                        f"{list(t.betas)}")
    if t.eps is not None and not t.eps > 0:
        raise ctx.error(T + ("eps",), f"expected a positive number or null, got {t.eps}")
    if not 0.0 < t.rmsprop_decay < 1.0:
        raise ctx.error(T + ("rmsprop_decay",), f"expected a value in (0, 1), got "
                                                f"{t.rmsprop_decay}")


def _check_eval(e: EvalSpec, d: DataSpec, ctx: _Context) -> None:
    E: Path_ = ("eval",)
    _positive(e.size, E + ("size",), ctx)
    # eval's 1 crop is training's validation (data.resize, then a data.input_size center crop):
    # the same numbers, or "eval reproduces training" would not hold
    if e.size != d.input_size:
        raise ctx.error(E + ("size",), f"{e.size} differs from data.input_size ({d.input_size}); "
                                       f"eval reproduces training only when they agree: set both "
                                       f"(--set data.input_size=N --set eval.size=N)",
                        depends=(("data", "input_size"),))
    _positive(e.batch_size, E + ("batch_size",), ctx)
    if e.crops not in (1, 10, 144):
        raise ctx.error(E + ("crops",), f"expected 1, 10 or 144, got {e.crops}")
    if not e.scales:
        raise ctx.error(E + ("scales",), "expected at least one scale")
    for i, scale in enumerate(e.scales):
        if scale < e.size:
            raise ctx.error(E + ("scales", i), f"a scale ({scale}) must be >= eval.size ({e.size})",
                            depends=(E + ("size",),))
    if e.scales[0] != d.resize:
        raise ctx.error(E + ("scales", 0), f"{e.scales[0]} differs from data.resize ({d.resize}); "
                                           f"eval's first scale is training's validation resize: "
                                           f"set both (--set data.resize=S --set "
                                           f"eval.scales=[S,...])",
                        depends=(("data", "resize"),))


#: The ONNX opsets torch's exporter writes and ONNX Runtime runs (``export.opset``, ``--opset``).
OPSETS = range(9, 21)


def _check_export(x: ExportSpec, ctx: _Context) -> None:
    parse_batch_range(x.batch, lambda msg: ctx.error(("export", "batch"), msg))
    if x.opset not in OPSETS:
        raise ctx.error(("export", "opset"), f"expected an opset from {OPSETS[0]} to "
                                             f"{OPSETS[-1]} (default 17), got {x.opset}")


def parse_batch_range(text: str, fail: Any = None) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' (or one number) -> (min, opt, max) with 1 <= min <= opt <= max."""
    def bad(msg: str) -> Exception:
        return fail(msg) if fail else InceptionError(f"batch range: {msg}")
    parts = str(text).split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise bad(f"expected MIN:OPT:MAX integers, got '{text}'") from None
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3 or not 1 <= nums[0] <= nums[1] <= nums[2]:
        raise bad(f"expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, got '{text}'")
    return nums[0], nums[1], nums[2]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _recipes_dir() -> Any:
    return resources.files("inceptionctl.recipes")


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the package, sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _recipes_dir().iterdir()
                  if p.name.endswith(".yaml"))


def _read_source(name_or_path: str | Path) -> tuple[str, str]:
    text_name = str(name_or_path)
    path = Path(text_name)
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in text_name or path.exists()
    if looks_like_path:
        if path.is_dir():
            raise RecipeError(f"{text_name}: is a folder; give a recipe file (a run folder's "
                              f"is {text_name.rstrip('/')}/recipe.yaml)")
        if not path.is_file():
            raise RecipeError(f"{text_name}: recipe file not found")
        try:
            return path.read_text(encoding="utf-8"), text_name
        except UnicodeDecodeError:
            with open(path, "rb") as fh:
                what = known_kind(fh.read(16))
            raise RecipeError(f"{text_name}: not a recipe: "
                              + (f"it is {what}" if what else "not UTF-8 text")
                              + "; a recipe is a YAML file") from None
        except OSError as exc:
            raise RecipeError(f"{text_name}: cannot read recipe: {exc}") from None
    names = available_recipes()
    if text_name not in names:
        raise RecipeError(f"unknown recipe '{text_name}'" + _name_hint(text_name, names)
                          + "; give a name or a path to a .yaml file")
    return (_recipes_dir() / f"{text_name}.yaml").read_text(encoding="utf-8"), \
        f"recipes/{text_name}.yaml"


def _set_path(data: Any, key: str, raw: str, ctx: _Context) -> Path_:
    """Apply one dotted override to plain data in place; the key must already exist."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise RecipeError(f"--set {key}={raw}: expected KEY=VALUE with a dotted key such as "
                          f"model.num_classes=10")
    node, path = data, ()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {key}={raw}: {_fmt_path(path)} is a list of "
                                  f"{len(node)}; '{part}' is not an index into it")
            index: Any = int(part)
        elif isinstance(node, dict):
            if part not in node:
                raise RecipeError(f"--set {key}={raw}: unknown key '{part}' in "
                                  f"{_fmt_path(path)}" + _name_hint(part, [str(k) for k in node]))
            index = part
        else:
            raise RecipeError(f"--set {key}={raw}: {_fmt_path(path)} is a value, "
                              f"it has no key '{part}'")
        path = path + (index,)
        if last:
            try:
                node[index] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise RecipeError(f"--set {key}={raw}: the value is not valid YAML "
                                  f"({getattr(exc, 'problem', exc)})") from None
        else:
            node = node[index]
    return path


def parse_overrides(overrides: Any) -> list[tuple[str, str]]:
    """['a.b=1', ...], 'a.b=1' (one) or {'a.b': 1} -> [(key, raw value text)]."""
    if overrides is None:
        return []
    if isinstance(overrides, str):  # one override, not a sequence of one-letter ones
        overrides = [overrides]
    if isinstance(overrides, dict):
        return [(k, v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True)
                 .strip().removesuffix("...").strip()) for k, v in overrides.items()]
    pairs = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise RecipeError(f"--set {item}: expected KEY=VALUE, e.g. model.num_classes=10")
        pairs.append((key.strip(), value.strip()))
    return pairs


def recipe_from_data(data: Any, source: str = "<memory>", overrides: Any = None,
                     lines: dict[Path_, int] | None = None) -> Recipe:
    """Validate plain data (e.g. a recipe saved inside a checkpoint) into a Recipe.

    Old keys (:data:`KEY_CHANGES`), in ``data`` or in ``overrides``, are read in today's
    spelling, with one note each on stderr.
    """
    ctx = _Context(source, dict(lines or {}))
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping at the top of the recipe, "
                          f"got {_show(data)}")
    data, notes = _upgrade(data, ctx)
    for note in notes:
        _note(note)
    recipe = _convert(Recipe, data, (), ctx)
    pairs = parse_overrides(overrides)
    if pairs:
        resolved = to_data(recipe)
        for given, raw in pairs:
            key, notes = _upgrade_override(given, raw)
            for note in notes:
                _note(note)
            if key is None:
                continue
            path = _set_path(resolved, key, raw, ctx)
            ctx.overrides[path] = f"{given}={raw}"
        recipe = _convert(Recipe, resolved, (), ctx)
    _check_rules(recipe, ctx)
    return dataclasses.replace(recipe, source=source)


def at_input_size(recipe: Recipe, size: int) -> Recipe:
    """The recipe at another square input, validated: ``data.input_size`` and ``eval.size``
    move together (the rule that ties them), and scales below it are raised to it, with
    ``data.resize`` following ``eval.scales[0]``."""
    if size == recipe.data.input_size:
        return recipe
    scales = [max(int(s), size) for s in recipe.eval.scales]
    return recipe_from_data(recipe.to_dict(), recipe.source, {
        "data.input_size": size, "eval.size": size, "eval.scales": scales,
        "data.resize": scales[0]})


def load_recipe(name_or_path: str | Path, overrides: Any = None) -> Recipe:
    """Return the validated recipe named ``name_or_path`` (shipped name or YAML path).

    ``overrides`` are dotted keys applied after the file is read, as ``["model.num_classes=10"]``
    or ``{"model.num_classes": 10}``; each must name a key that exists in the resolved recipe.
    """
    text, source = _read_source(name_or_path)
    data, lines = _compose(text, source)
    if data is None:
        raise RecipeError(f"{source}: the recipe is empty")
    return recipe_from_data(data, source, overrides, lines)
