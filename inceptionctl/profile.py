"""Counting a recipe's cost: parameters and multiply-adds, from the built model itself.

Two entry points:

* :func:`count_cost` -- the totals only (:class:`Cost`), as ``recipes`` lists them.
* :func:`table1` -- the static profile: the paper's Table 1, one row per layer, counted from the
  model the recipe builds (a :class:`Profile`). :func:`compare_with_paper` puts the paper's
  printed cells (:data:`PAPER_TABLE1`) beside ours and :func:`render_table1` makes the rich table.

How the profile is counted
--------------------------
The model is built and run once (``forward_train``, batch 1) on the meta device, under
``torch.utils.flop_counter.FlopCounterMode``. Every row is a submodule of the built model:
multiply-adds are the counter's FLOPs attributed to that submodule, divided by two; output sizes
are the shapes a forward hook saw; params are the submodule's parameters; the Inception widths
are the built convolutions' channel counts (so the width multiplier is applied). Nothing comes
from a hand-written table. Pooling, ReLU, batch norm, dropout and LRN are not multiply-adds (on
the meta device our LRN runs its channel window as a banded 1x1 convolution, which the counter
sees; LRN rows report 0, and :func:`count_cost` subtracts it the same way). Every FLOP the counter sees must land in
exactly one row (main, aux or LRN), or :func:`table1` raises -- so the row sums are the totals.

Rows, in forward order: each stem layer (convolutions, max pools, ``lrnN``), each Inception
module (``inception3a``...) and stage pool (``pool3``...), then the head (``head_pool``,
``dropout``, ``fc``). The auxiliary classifiers are listed separately, one group per head, and
are not in the inference totals (``params_with_aux`` / ``macs_with_aux`` include them).

``Profile.paper_view()`` presents the rows the paper's way: LRN rows dropped (Table 1 does not
list them; they cost nothing) and a stem 1x1 convolution followed by a wider-kernel convolution
(``conv2``, ``conv3``) merged into one row ``conv2+conv3`` -- Table 1's "convolution 3x3/1,
depth 2, #3x3 reduce 64, #3x3 192". Totals are unchanged.

JSON schema (``Profile.to_json()``; version 1)
----------------------------------------------
Units: ``params``, ``weights`` and ``macs`` are integers (counts; multiply-adds of one forward
pass of ONE image at ``input_size``); sizes are ``[H, W, C]`` integer lists (a linear or dropout
output is ``[1, 1, C]``)::

    {
      "schema": "inceptionctl.profile/1",
      "recipe": str,                  # recipe name
      "input_size": int,              # square input side the model ran at
      "rows": [Row, ...],             # inference path, forward order
      "aux": [                        # auxiliary classifiers (training only), network order
        {"name": "aux1", "after": "inception4a", "rows": [Row, ...],
         "params": int, "weights": int, "macs": int}, ...],
      "totals": {
        "params": int,                # inference parameters (bias, batch norm included)
        "weights": int,               # conv + linear weights only (paper style: no bias, no BN)
        "macs": int,                  # inference multiply-adds (= count_cost(...).macs)
        "depth": int,                 # sum of row depths (22 for GoogLeNet, as in the paper)
        "params_with_aux": int,       # everything training updates (= count_cost params_with_aux)
        "macs_with_aux": int},        # a training forward pass (main + aux heads)
      "paper": [Comparison, ...]      # only with to_json(paper=True): compare_with_paper()
    }

    Row = {
      "name": str,       # layer name: "conv1", "maxpool1", "lrn1", "inception3a", "pool3",
                         #   "head_pool", "dropout", "fc"; aux rows "aux1.pool", "aux1.fc1", ...;
                         #   the paper view's merged row is "conv2+conv3"
      "module": str,     # dotted path of the submodule in the built model ("stem.conv1",
                         #   "blocks.inception3a", "aux.aux1.fc1"; merged: "stem.conv2+stem.conv3")
      "type": str,       # convolution | max pool | avg pool | inception | dropout | linear | lrn
      "label": str,      # Table 1's first column: "convolution", "inception (3a)", "dropout (40%)"
      "patch": str,      # patch size / stride, "7x7/2"; "" for inception, dropout, linear, lrn;
                         #   an adaptive pool shows the window it used ("7x7/1") or "adaptive 4x4"
      "output": [H, W, C],
      "depth": int,      # conv layers on the longest path: conv 1, inception 2, linear 1, else 0
      "widths": {"1x1": int|null, "3x3_reduce": int|null, "3x3": int|null,
                 "5x5_reduce": int|null, "5x5": int|null, "pool_proj": int|null},
                         # Table 1's six columns (after the width multiplier); null where blank.
                         # The "5x5" branch's kernel is the recipe's 5x5_kernel (3 in googlenet-bn)
      "params": int,     # the submodule's parameters (bias, batch norm included)
      "weights": int,    # its conv + linear weights only (what the paper counts)
      "macs": int        # its multiply-adds (0 for pools, dropout, LRN)
    }

    Comparison (see compare_with_paper) = {
      "name": str|null, "paper": str|null,           # our row / the paper's row ("total" last)
      "patch", "paper_patch", "output", "paper_output", "depth", "paper_depth",
      "weights": int|null, "weights_k": float|null,  # ours, weights only; weights_k = weights/1024
      "paper_params_k": float|null, "params_k_diff": float|null,   # weights_k - paper_params_k
      "macs": int|null, "ops_m": float|null,         # ops_m = macs / 1e6
      "paper_ops_m": float|null, "ops_m_diff": float|null}         # ops_m - paper_ops_m

Comparing with the paper
------------------------
Table 1's "K" of params is 1024 and its "M" of ops is 10^6, and it counts convolution and linear
WEIGHTS only (no bias, no batch norm): inception (3a) is 163,328 weights = 159.5K, and
163,328 x 28 x 28 = 128.0M ops. The comparison therefore uses our ``weights`` (paper style),
not ``params`` (the model's real parameter count, bias and BN included, which the main columns
show). Several printed cells disagree with a direct count of the layers they describe; the
comparison shows every difference, it does not hide any (see ``PAPER_TABLE1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .recipe import Recipe

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class Cost:
    params: int            # inference parameters (no aux heads)
    params_with_aux: int   # everything training updates
    macs: int              # multiply-adds of one forward pass at ``input_size`` (no aux heads)
    input_size: int


def count_cost(recipe: Recipe, input_size: int | None = None) -> Cost:
    """Parameters and multiply-adds of the model ``recipe`` builds, counted on the meta device.

    Multiply-adds are torch's FLOP counter (convolutions and matmuls) divided by two; pooling,
    LRN, ReLU and batch norm are not multiply-adds and are not counted, as in the paper (on the
    meta device our LRN runs its channel window as a 1x1 convolution, which the counter sees and
    we subtract).
    """
    from .model import LocalResponseNorm, build_model

    size = input_size or recipe.data.input_size
    with torch.device("meta"):
        model = build_model(recipe).eval()
        x = torch.empty(1, recipe.model.in_channels, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    per_module = counter.get_flop_counts()
    lrn = {f"{type(model).__name__}.{name}" for name, m in model.named_modules()
           if isinstance(m, LocalResponseNorm)}
    lrn_flops = sum(sum(per_module.get(name, {}).values()) for name in lrn)
    return Cost(model.num_params(), model.num_params(include_aux=True),
                (counter.get_total_flops() - lrn_flops) // 2, size)


# --------------------------------------------------------------------------------------------
# The static profile: Table 1 counted from the built model
# --------------------------------------------------------------------------------------------

SCHEMA = "inceptionctl.profile/1"

#: Table 1's six width columns, as JSON keys (the recipe's YAML spellings), in the paper's order.
WIDTH_KEYS = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")
WIDTH_HEADERS = ("#1x1", "#3x3 reduce", "#3x3", "#5x5 reduce", "#5x5", "pool proj")
_NO_WIDTHS: tuple[int | None, ...] = (None,) * 6


@dataclass(frozen=True)
class Row:
    """One layer of the profile (see the module docstring for the fields' meaning)."""

    name: str
    module: str
    type: str
    label: str
    patch: str
    output: tuple[int, int, int]
    depth: int
    widths: tuple[int | None, ...]
    params: int
    weights: int
    macs: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "type": self.type,
                "label": self.label, "patch": self.patch, "output": list(self.output),
                "depth": self.depth, "widths": dict(zip(WIDTH_KEYS, self.widths)),
                "params": self.params, "weights": self.weights, "macs": self.macs}


@dataclass(frozen=True)
class AuxProfile:
    """One auxiliary classifier: its rows and their sums (training only)."""

    name: str       # "aux1"
    after: str      # the row it reads from, "inception4a"
    rows: tuple[Row, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "after": self.after, "rows": [r.to_json() for r in self.rows],
                "params": self.params, "weights": self.weights, "macs": self.macs}


@dataclass(frozen=True)
class Totals:
    params: int            # inference (no aux heads), bias and BN included
    weights: int           # inference, conv + linear weights only
    macs: int              # inference multiply-adds
    depth: int             # sum of the rows' depths
    params_with_aux: int
    macs_with_aux: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Profile:
    """Table 1 of a recipe: ``rows`` (inference path), ``aux`` (heads), ``totals``."""

    recipe: str
    input_size: int
    rows: tuple[Row, ...]
    aux: tuple[AuxProfile, ...]
    totals: Totals
    paper_layout: bool = field(default=False, compare=False)  # True: made by paper_view()

    def row(self, name: str) -> Row:
        """The row called ``name`` (KeyError if there is none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def paper_view(self) -> Profile:
        """The rows as Table 1 prints them: LRN dropped, stem 1x1 reduce + conv merged."""
        if self.paper_layout:
            return self
        rows = [r for r in self.rows if r.type != "lrn"]
        out: list[Row] = []
        i = 0
        while i < len(rows):
            a = rows[i]
            b = rows[i + 1] if i + 1 < len(rows) else None
            if (b is not None and a.module.startswith("stem.") and b.module.startswith("stem.")
                    and a.type == b.type == "convolution" and a.patch.startswith("1x1/")
                    and not b.patch.startswith("1x1/")):
                out.append(Row(
                    name=f"{a.name}+{b.name}", module=f"{a.module}+{b.module}",
                    type="convolution", label="convolution", patch=b.patch, output=b.output,
                    depth=a.depth + b.depth,
                    widths=(None, a.output[2], b.output[2], None, None, None),
                    params=a.params + b.params, weights=a.weights + b.weights,
                    macs=a.macs + b.macs))
                i += 2
            else:
                out.append(a)
                i += 1
        return dataclasses.replace(self, rows=tuple(out), paper_layout=True)

    def to_json(self, paper: bool = False) -> dict[str, Any]:
        """The documented JSON document (module docstring); ``paper`` adds the comparison."""
        doc: dict[str, Any] = {
            "schema": SCHEMA, "recipe": self.recipe, "input_size": self.input_size,
            "rows": [r.to_json() for r in self.rows],
            "aux": [a.to_json() for a in self.aux],
            "totals": self.totals.to_json()}
        if paper:
            doc["paper"] = compare_with_paper(self)
        return doc


def _kind(m: nn.Module) -> str:
    from .model import ConvBlock, Inception, LocalResponseNorm

    if isinstance(m, (ConvBlock, nn.Conv2d)):
        return "convolution"
    if isinstance(m, LocalResponseNorm):
        return "lrn"
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return "max pool"
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "avg pool"
    if isinstance(m, Inception):
        return "inception"
    if isinstance(m, nn.Dropout):
        return "dropout"
    if isinstance(m, nn.Linear):
        return "linear"
    return type(m).__name__.lower()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _patch(m: nn.Module, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> str:
    conv = getattr(m, "conv", m)
    if isinstance(conv, nn.Conv2d):
        (kh, kw), (s, _) = _pair(conv.kernel_size), _pair(conv.stride)
        return f"{kh}x{kw}/{s}"
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        (kh, kw), (s, _) = _pair(m.kernel_size), _pair(m.stride)
        return f"{kh}x{kw}/{s}"
    if isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
        (h, w), (oh, ow) = in_hw, out_hw
        if (oh, ow) == (1, 1):
            return f"{h}x{w}/1"  # one window over the whole map, as Table 1's "7x7/1"
        if h % oh == 0 and w % ow == 0 and h // oh == w // ow:
            return f"{h // oh}x{w // ow}/{h // oh}"
        return f"adaptive {oh}x{ow}"
    return ""


def _depth(m: nn.Module) -> int:
    from .model import Inception

    if isinstance(m, Inception):
        return max(sum(isinstance(x, nn.Conv2d) for x in branch.modules())
                   for branch in m.children())
    return sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())


def _widths(m: nn.Module) -> tuple[int | None, ...]:
    from .model import Inception

    if not isinstance(m, Inception):
        return _NO_WIDTHS
    return (m.branch1.conv.out_channels, m.branch2[0].conv.out_channels,
            m.branch2[1].conv.out_channels, m.branch3[0].conv.out_channels,
            m.branch3[1].conv.out_channels, m.branch4[1].conv.out_channels)


def _label(name: str, kind: str, m: nn.Module) -> str:
    if kind == "inception":
        return f"inception ({name.removeprefix('inception')})"
    if kind == "dropout":
        return f"dropout ({m.p * 100:g}%)"
    return kind


def _weights(m: nn.Module) -> int:
    return sum(x.weight.numel() for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear)))


def _at_size(recipe: Recipe, size: int) -> Recipe:
    """The recipe with ``data.input_size = size``, validated (a clear error when too small)."""
    from .recipe import at_input_size

    return at_input_size(recipe, size)


def table1(recipe: Recipe, input_size: int | None = None) -> Profile:
    """The static profile of the model ``recipe`` builds: Table 1, counted on the meta device.

    ``input_size`` (default: the recipe's) rebuilds the model for that input, so the aux heads'
    layers are sized for it; a size too small for the model raises :class:`RecipeError`.
    The inference totals equal :func:`count_cost` at the same size.
    """
    from .model import LocalResponseNorm, TrainStep, build_model

    size = input_size or recipe.data.input_size
    recipe = _at_size(recipe, size)
    with torch.device("meta"):
        model = build_model(recipe).eval()
        x = torch.empty(1, recipe.model.in_channels, size, size)
    root = TrainStep(model)  # the counter names modules from the first one entered: the root
    prefix = f"{type(root).__name__}.model."

    # The modules that are rows: stem layers, blocks, aux head layers, the head's layers.
    targets: list[tuple[str, str, nn.Module]] = []  # (row name, module path, module)
    for child_name, child in model.named_children():
        if child_name in ("stem", "blocks"):
            targets += [(n, f"{child_name}.{n}", m) for n, m in child.named_children()]
        elif child_name == "aux":
            for head_name, head in child.named_children():
                targets += [(f"{head_name}.{n}", f"aux.{head_name}.{n}", m)
                            for n, m in head.named_children()
                            if not isinstance(m, (nn.ReLU, nn.Identity))]
        else:
            targets.append((child_name, child_name, child))

    seen: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {}

    def hook(path: str):
        def fn(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if path not in seen:
                seen[path] = (len(seen), tuple(args[0].shape), tuple(out.shape))
        return fn

    handles = [m.register_forward_hook(hook(path)) for _, path, m in targets]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            root(x)
    finally:
        for h in handles:
            h.remove()
    flops = counter.get_flop_counts()

    def hw(shape: tuple[int, ...]) -> tuple[int, int]:
        return (shape[2], shape[3]) if len(shape) == 4 else (1, 1)

    main: list[tuple[int, Row]] = []
    aux: dict[str, list[tuple[int, Row]]] = {}
    attributed = 0
    for name, path, m in targets:
        if path not in seen:
            continue  # not on any path of a forward pass (nothing to count)
        order, in_shape, out_shape = seen[path]
        row_flops = sum(flops.get(prefix + path, {}).values())
        attributed += row_flops
        kind = _kind(m)
        h, w = hw(out_shape)
        row = Row(name=name, module=path, type=kind, label=_label(name, kind, m),
                  patch=_patch(m, hw(in_shape), (h, w)), output=(h, w, out_shape[1]),
                  depth=_depth(m) if kind != "lrn" else 0, widths=_widths(m),
                  params=sum(p.numel() for p in m.parameters()), weights=_weights(m),
                  macs=0 if isinstance(m, LocalResponseNorm) else row_flops // 2)
        if path.startswith("aux."):
            aux.setdefault(path.split(".")[1], []).append((order, row))
        else:
            main.append((order, row))
    if attributed != counter.get_total_flops():
        raise RuntimeError(f"profile: {counter.get_total_flops() - attributed} FLOPs of "
                           f"{type(model).__name__} belong to no row (a new kind of layer?)")

    rows = tuple(r for _, r in sorted(main, key=lambda t: t[0]))
    heads = tuple(AuxProfile(name, model.aux[name].after,  # type: ignore[arg-type]
                             tuple(r for _, r in sorted(rs, key=lambda t: t[0])))
                  for name, rs in aux.items())
    params = sum(r.params for r in rows)
    macs = sum(r.macs for r in rows)
    totals = Totals(params=params, weights=sum(r.weights for r in rows), macs=macs,
                    depth=sum(r.depth for r in rows),
                    params_with_aux=params + sum(a.params for a in heads),
                    macs_with_aux=macs + sum(a.macs for a in heads))
    return Profile(recipe=recipe.name, input_size=size, rows=rows, aux=heads, totals=totals)


# --------------------------------------------------------------------------------------------
# The paper's printed Table 1, for the --paper columns only
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperRow:
    """One printed row of Table 1. ``key`` is the name of our row (paper view) it describes."""

    key: str
    label: str
    patch: str
    output: tuple[int, int, int]
    depth: int
    widths: tuple[int | None, ...] = _NO_WIDTHS
    params_k: float | None = None   # printed params, K = 1024 weights (no bias)
    ops_m: float | None = None      # printed ops, M = 10^6 multiply-adds


def _inc(key: str, out: tuple[int, int, int], widths: tuple[int, ...], params_k: float,
         ops_m: float) -> PaperRow:
    return PaperRow(f"inception{key}", f"inception ({key})", "", out, 2, widths, params_k, ops_m)


#: Table 1 of Szegedy et al. 2014, as printed, mapped to our row names (paper view). Printed
#: cells that disagree with a direct count of the layers they describe (weights only, K = 1024,
#: M = 10^6): conv1 (2.7K / 34M printed; 9,408 weights = 9.2K, 118.0M counted), inception 5a
#: (1072K / 54M; 1,042,432 = 1018K, 51.1M), 5b params (1388K; 1,442,816 = 1409K), and the
#: params of 4a (364K; 366.75K), 4c (463K; 497.5K), 4d (580K; 590.5K), 4e (840K; 847K); 3b and
#: 4b are off by exactly 1K. All other ops cells agree with the count within 1M.
PAPER_TABLE1: tuple[PaperRow, ...] = (
    PaperRow("conv1", "convolution", "7x7/2", (112, 112, 64), 1, params_k=2.7, ops_m=34),
    PaperRow("maxpool1", "max pool", "3x3/2", (56, 56, 64), 0),
    PaperRow("conv2+conv3", "convolution", "3x3/1", (56, 56, 192), 2,
             (None, 64, 192, None, None, None), 112, 360),
    PaperRow("maxpool2", "max pool", "3x3/2", (28, 28, 192), 0),
    _inc("3a", (28, 28, 256), (64, 96, 128, 16, 32, 32), 159, 128),
    _inc("3b", (28, 28, 480), (128, 128, 192, 32, 96, 64), 380, 304),
    PaperRow("pool3", "max pool", "3x3/2", (14, 14, 480), 0),
    _inc("4a", (14, 14, 512), (192, 96, 208, 16, 48, 64), 364, 73),
    _inc("4b", (14, 14, 512), (160, 112, 224, 24, 64, 64), 437, 88),
    _inc("4c", (14, 14, 512), (128, 128, 256, 24, 64, 64), 463, 100),
    _inc("4d", (14, 14, 528), (112, 144, 288, 32, 64, 64), 580, 119),
    _inc("4e", (14, 14, 832), (256, 160, 320, 32, 128, 128), 840, 170),
    PaperRow("pool4", "max pool", "3x3/2", (7, 7, 832), 0),
    _inc("5a", (7, 7, 832), (256, 160, 320, 32, 128, 128), 1072, 54),
    _inc("5b", (7, 7, 1024), (384, 192, 384, 48, 128, 128), 1388, 71),
    PaperRow("head_pool", "avg pool", "7x7/1", (1, 1, 1024), 0),
    PaperRow("dropout", "dropout (40%)", "", (1, 1, 1024), 0),
    PaperRow("fc", "linear", "", (1, 1, 1000), 1, params_k=1000, ops_m=1),
    PaperRow("softmax", "softmax", "", (1, 1, 1000), 0),  # not a layer of ours: we return logits
)


def _diff(ours: float | None, paper: float | None) -> float | None:
    return None if ours is None or paper is None else ours - paper


def _comparison(name: str | None, row: Row | None, paper: PaperRow | None) -> dict[str, Any]:
    weights = row.weights if row is not None else None
    macs = row.macs if row is not None else None
    weights_k = weights / 1024 if weights is not None else None
    ops_m = macs / 1e6 if macs is not None else None
    p_k = paper.params_k if paper is not None else None
    p_m = paper.ops_m if paper is not None else None
    return {"name": name, "paper": paper.label if paper is not None else None,
            "patch": row.patch if row is not None else None,
            "paper_patch": paper.patch if paper is not None else None,
            "output": list(row.output) if row is not None else None,
            "paper_output": list(paper.output) if paper is not None else None,
            "depth": row.depth if row is not None else None,
            "paper_depth": paper.depth if paper is not None else None,
            "weights": weights, "weights_k": weights_k,
            "paper_params_k": p_k, "params_k_diff": _diff(weights_k, p_k),
            "macs": macs, "ops_m": ops_m, "paper_ops_m": p_m, "ops_m_diff": _diff(ops_m, p_m)}


def compare_with_paper(profile: Profile) -> list[dict[str, Any]]:
    """Our rows (paper view) beside Table 1's printed cells, with the differences.

    One dict per row (schema: ``Comparison`` in the module docstring), in the paper's order;
    a paper row we have no layer for (``softmax``, or a layer a small recipe leaves out) has
    ``name: null``; a row of ours the paper does not print comes where it falls, with
    ``paper: null``; the last dict is ``total``. The comparison uses our ``weights`` (conv and
    linear weights, no bias, no BN), as the paper counts; a blank printed cell gives a null
    difference.
    """
    rows = profile.paper_view().rows
    by_key = {p.key: p for p in PAPER_TABLE1}
    ours = {r.name: r for r in rows}
    out: list[dict[str, Any]] = []
    paper_iter = iter(PAPER_TABLE1)
    for r in rows:
        if r.name in by_key:  # first the paper rows before this one that we do not have
            for p in paper_iter:
                if p.key == r.name:
                    break
                if p.key not in ours:
                    out.append(_comparison(None, None, p))
            out.append(_comparison(r.name, r, by_key[r.name]))
        else:
            out.append(_comparison(r.name, r, None))
    for p in paper_iter:
        if p.key not in ours:
            out.append(_comparison(None, None, p))
    total = _comparison("total", None, None)
    t = profile.totals
    total.update(paper="total", depth=t.depth, weights=t.weights, weights_k=t.weights / 1024,
                 macs=t.macs, ops_m=t.macs / 1e6,
                 paper_params_k=sum(p.params_k or 0 for p in PAPER_TABLE1),
                 paper_ops_m=sum(p.ops_m or 0 for p in PAPER_TABLE1),
                 paper_depth=sum(p.depth for p in PAPER_TABLE1))
    total.update(params_k_diff=total["weights_k"] - total["paper_params_k"],
                 ops_m_diff=total["ops_m"] - total["paper_ops_m"])
    out.append(total)
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _n(v: int | None) -> str:
    return "" if v is None else str(v)


def _m(macs: int) -> str:
    return f"{macs / 1e6:,.1f}M" if macs else "0"


def _k(v: float | None) -> str:
    if v is None:
        return ""
    return "0" if v == 0 else f"{v:,.1f}K".replace(".0K", "K")


def _signed(v: float | None, unit: str) -> str:
    if v is None:
        return ""
    return "0" if round(v, 1) == 0 else f"{v:+,.1f}{unit}"


def render_table1(profile: Profile, paper: bool = False) -> Table:
    """Table 1 as one rich Table: the rows, a bold ``total`` row, then a dimmed section with
    the aux heads (each head's rows and its own total; training only, not in the totals).
    The caption repeats the totals (parameters, G multiply-adds). Fits a 200-column console.

    ``paper=True`` shows the paper view (LRN dropped, conv2+conv3 merged) and adds five columns:
    our weights (K = 1024, no bias/BN), the paper's params and the difference, the paper's ops
    and the difference (M = 10^6); paper rows we have no layer for (softmax) are listed too,
    marked ``paper only``, with our columns blank.
    """
    from rich.table import Table

    view = profile.paper_view() if paper else profile
    t = profile.totals
    table = Table(title=f"{profile.recipe} at {profile.input_size}x{profile.input_size}"
                        + (" vs. Table 1 of the paper" if paper else ""),
                  caption=f"{t.params:,} parameters, {t.macs / 1e9:.3f} G multiply-adds "
                          f"(inference, batch 1); with aux heads {t.params_with_aux:,} / "
                          f"{t.macs_with_aux / 1e9:.3f} G")
    for col in ("name", "type", "patch/\nstride"):
        table.add_column(col)
    headers = ("output\nsize", "depth", "#1x1", "#3x3\nreduce", "#3x3", "#5x5\nreduce", "#5x5",
               "pool\nproj", "params", "mult-adds")
    if paper:
        headers += ("weights", "paper\nparams", "Δ\nparams", "paper\nops", "Δ ops")
    for col in headers:
        table.add_column(col, justify="right")

    def cells(r: Row) -> list[str]:
        h, w, c = r.output
        return [r.name, r.label, r.patch, f"{h}x{w}x{c}", str(r.depth),
                *(_n(v) for v in r.widths), f"{r.params:,}", _m(r.macs)]

    def paper_cells(c: dict[str, Any]) -> list[str]:
        return [_k(c["weights_k"]), _k(c["paper_params_k"]), _signed(c["params_k_diff"], "K"),
                "" if c["paper_ops_m"] is None else f"{c['paper_ops_m']:,.0f}M",
                _signed(c["ops_m_diff"], "M")]

    blank = [""] * 6
    total = ["total", "", "", "", str(t.depth), *blank, f"{t.params:,}", _m(t.macs)]
    if paper:
        by_name = {r.name: r for r in view.rows}
        comparison = compare_with_paper(profile)
        for c in comparison[:-1]:
            if c["name"] is not None:
                table.add_row(*cells(by_name[c["name"]]), *paper_cells(c))
            else:  # a paper row this recipe has no layer for: only the paper's columns
                table.add_row(f"({c['paper']})", "paper only", "", "", "", *blank, "", "",
                              *paper_cells(c), style="dim")
        total += paper_cells(comparison[-1])
    else:
        for r in view.rows:
            table.add_row(*cells(r))
    table.add_row(*total, style="bold", end_section=True)

    if profile.aux:
        extra = [""] * (5 if paper else 0)
        table.add_row("aux heads", "training only", *[""] * 11, *extra, style="dim italic")
        for head in profile.aux:
            for r in head.rows:
                table.add_row(*cells(r), *extra, style="dim")
            table.add_row(f"{head.name} total", f"after {head.after.removeprefix('inception')}",
                          "", "", str(sum(r.depth for r in head.rows)), *blank,
                          f"{head.params:,}", _m(head.macs), *extra, style="dim bold")
    return table
