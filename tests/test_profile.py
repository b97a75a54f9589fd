"""The static profile (Table 1 counted from the built model) and its comparison with the paper."""

import functools
import json
import math

import pytest
from rich.console import Console

from inceptionctl import RecipeError, load_recipe
from inceptionctl.profile import (PAPER_TABLE1, SCHEMA, WIDTH_KEYS, Profile, compare_with_paper,
                                  count_cost, render_table1, table1)

from .conftest import SHIPPED


@functools.lru_cache(maxsize=None)
def _profile(name: str, size: int | None = None) -> Profile:
    return table1(load_recipe(name), size)


@functools.lru_cache(maxsize=None)
def _cost(name: str, size: int | None = None):
    return count_cost(load_recipe(name), size)


# ------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name", SHIPPED)
def test_totals_equal_count_cost_and_the_row_sums(name):
    p, cost = _profile(name), _cost(name)
    t = p.totals
    assert (t.params, t.macs, t.params_with_aux) == (cost.params, cost.macs, cost.params_with_aux)
    assert p.input_size == cost.input_size == load_recipe(name).data.input_size
    assert sum(r.params for r in p.rows) == t.params
    assert sum(r.macs for r in p.rows) == t.macs
    assert sum(r.weights for r in p.rows) == t.weights <= t.params
    assert t.params_with_aux == t.params + sum(r.params for a in p.aux for r in a.rows)
    assert t.macs_with_aux == t.macs + sum(a.macs for a in p.aux) > t.macs
    assert t.depth == 22  # the paper's "22 layers deep" (counting layers with parameters)
    recipe = load_recipe(name)
    assert [a.after for a in p.aux] == [f"inception{m}" for m in recipe.model.aux.after]
    # LRN is a banded 1x1 conv in our model: not a multiply-add, and not a parameter
    lrn = [r for r in p.rows if r.type == "lrn"]
    assert len(lrn) == len(recipe.model.lrn.after)
    assert all(r.macs == 0 and r.params == 0 and r.depth == 0 for r in lrn)


def test_exact_figures():
    g, bn = _profile("googlenet").totals, _profile("googlenet-bn").totals
    assert (g.params, g.macs) == (6_998_552, 1_582_671_872)
    assert round(g.macs / 1e9, 3) == 1.583
    assert (bn.params, bn.macs) == (6_624_904, 1_498_376_192)
    assert round(bn.macs / 1e9, 3) == 1.498
    small = _profile("googlenet-small")
    assert small.input_size == 32 and small.totals.params < 500_000


def test_googlenet_rows_are_table1():
    p = _profile("googlenet")
    expected = [
        ("conv1", "convolution", "7x7/2", (112, 112, 64), 1),
        ("maxpool1", "max pool", "3x3/2", (56, 56, 64), 0),
        ("lrn1", "lrn", "", (56, 56, 64), 0),
        ("conv2", "convolution", "1x1/1", (56, 56, 64), 1),
        ("conv3", "convolution", "3x3/1", (56, 56, 192), 1),
        ("lrn2", "lrn", "", (56, 56, 192), 0),
        ("maxpool2", "max pool", "3x3/2", (28, 28, 192), 0),
        ("inception3a", "inception", "", (28, 28, 256), 2),
        ("inception3b", "inception", "", (28, 28, 480), 2),
        ("pool3", "max pool", "3x3/2", (14, 14, 480), 0),
        ("inception4a", "inception", "", (14, 14, 512), 2),
        ("inception4b", "inception", "", (14, 14, 512), 2),
        ("inception4c", "inception", "", (14, 14, 512), 2),
        ("inception4d", "inception", "", (14, 14, 528), 2),
        ("inception4e", "inception", "", (14, 14, 832), 2),
        ("pool4", "max pool", "3x3/2", (7, 7, 832), 0),
        ("inception5a", "inception", "", (7, 7, 832), 2),
        ("inception5b", "inception", "", (7, 7, 1024), 2),
        ("head_pool", "avg pool", "7x7/1", (1, 1, 1024), 0),
        ("dropout", "dropout", "", (1, 1, 1024), 0),
        ("fc", "linear", "", (1, 1, 1000), 1),
    ]
    assert [(r.name, r.type, r.patch, r.output, r.depth) for r in p.rows] == expected
    assert p.row("inception3a").label == "inception (3a)"
    assert p.row("dropout").label == "dropout (40%)"
    assert p.row("inception4e").widths == (256, 160, 320, 32, 128, 128)
    assert p.row("conv1").widths == (None,) * 6
    assert [r.name for r in p.aux[0].rows] == ["aux1.pool", "aux1.conv", "aux1.fc1",
                                               "aux1.dropout", "aux1.fc2"]
    assert p.aux[0].rows[0].patch == "5x5/3" and p.aux[0].rows[0].output == (4, 4, 512)
    assert p.aux[1].rows[0].output == (4, 4, 528)


def test_widths_come_from_the_built_model():
    p = _profile("googlenet-small")  # width multiplier 0.25
    assert p.row("inception3a").widths == (16, 24, 32, 4, 8, 8)
    assert p.row("inception3a").output == (16, 16, 64)
    bn = _profile("googlenet-bn")  # 2x2 pool before stage 5, adaptive 4x4 aux pool
    assert bn.row("pool4").patch == "2x2/2" and bn.row("pool4").output == (7, 7, 832)
    assert bn.aux[0].rows[0].patch == "adaptive 4x4"


# ----------------------------------------------------------- an independent, analytic count


def _analytic(name: str) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """Params and MACs of a recipe from its widths and hand-computed feature-map sizes."""
    m = load_recipe(name).model
    size = load_recipe(name).data.input_size
    extra = (1 if m.conv_bias else 0) + (2 if m.norm == "batchnorm" else 0)  # per out channel

    def conv(cin, cout, k, side):
        return k * k * cin * cout + extra * cout, k * k * cin * cout * side * side

    def conv_side(s, k, st, p):
        return (s + 2 * p - k) // st + 1

    def pool_side(s, k, st, p):  # max pools: ceil mode, last window starts inside the input
        out = -(-(s + 2 * p - k) // st) + 1
        return out - 1 if (out - 1) * st >= s + p else out

    params = macs = 0
    per_module: dict[str, tuple[int, int]] = {}
    cin, s = m.in_channels, size
    for layer in m.stem:
        if layer.layer == "conv":
            s = conv_side(s, layer.kernel, layer.stride, layer.padding)
            p_, m_ = conv(cin, m.width(layer.out), layer.kernel, s)
            params, macs, cin = params + p_, macs + m_, m.width(layer.out)
        else:
            s = pool_side(s, layer.kernel, layer.stride, layer.padding)
    k5 = m.branch5x5_kernel
    for stage in m.stages:
        for mod, w in stage.modules.items():
            w = {k: m.width(getattr(w, f)) for k, f in zip(
                WIDTH_KEYS, ("n1x1", "n3x3_reduce", "n3x3", "n5x5_reduce", "n5x5", "pool_proj"))}
            parts = [conv(cin, w["1x1"], 1, s), conv(cin, w["3x3_reduce"], 1, s),
                     conv(w["3x3_reduce"], w["3x3"], 3, s), conv(cin, w["5x5_reduce"], 1, s),
                     conv(w["5x5_reduce"], w["5x5"], k5, s), conv(cin, w["pool_proj"], 1, s)]
            per_module[mod] = (sum(a for a, _ in parts), sum(b for _, b in parts))
            params += per_module[mod][0]
            macs += per_module[mod][1]
            cin = w["1x1"] + w["3x3"] + w["5x5"] + w["pool_proj"]
        if stage.pool is not None:
            s = pool_side(s, stage.pool.kernel, stage.pool.stride, stage.pool.padding)
    assert m.head.pool.output_size == 1
    params += cin * m.num_classes + m.num_classes
    macs += cin * m.num_classes
    return params, macs, per_module


@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn"])
def test_totals_match_an_analytic_count(name):
    params, macs, per_module = _analytic(name)
    p = _profile(name)
    assert (p.totals.params, p.totals.macs) == (params, macs)
    for mod, (mp, mm) in per_module.items():
        row = p.row(f"inception{mod}")
        assert (row.params, row.macs) == (mp, mm), mod


# ----------------------------------------------------------------------------- the paper


def test_paper_view_merges_the_stem_reduce_and_drops_lrn():
    p = _profile("googlenet")
    view = p.paper_view()
    assert view.totals == p.totals and view.paper_view() is view
    assert [r.name for r in view.rows][:4] == ["conv1", "maxpool1", "conv2+conv3", "maxpool2"]
    assert not any(r.type == "lrn" for r in view.rows)
    merged = view.row("conv2+conv3")
    assert (merged.type, merged.patch, merged.output, merged.depth) == \
        ("convolution", "3x3/1", (56, 56, 192), 2)
    assert merged.widths == (None, 64, 192, None, None, None)
    assert merged.macs == p.row("conv2").macs + p.row("conv3").macs
    assert merged.params == p.row("conv2").params + p.row("conv3").params
    assert sum(r.macs for r in view.rows) == p.totals.macs
    assert sum(r.depth for r in view.rows) == 22


def test_comparison_with_the_paper():
    comparison = compare_with_paper(_profile("googlenet"))
    by = {c["name"]: c for c in comparison}
    assert [c["paper"] for c in comparison][:-1] == [p.label for p in PAPER_TABLE1]
    assert by[None]["paper"] == "softmax" and by["total"]["paper"] == "total"
    for c in comparison[:-1]:
        if c["name"] is not None:
            assert c["output"] == c["paper_output"], c["name"]
            assert c["depth"] == c["paper_depth"], c["name"]
            assert c["patch"] == c["paper_patch"], c["name"]
    # paper-style weights (no bias): the merged stem conv, 3a and the classifier match to rounding
    for name in ("conv2+conv3", "inception3a", "fc"):
        assert abs(by[name]["params_k_diff"]) < 1, name
    # ops: every Inception module but 5a, the stem conv and the classifier within 1M
    for name in ("conv2+conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                 "inception4c", "inception4d", "inception4e", "inception5b", "fc"):
        assert abs(by[name]["ops_m_diff"]) < 1, name
    # printed cells that disagree with a direct count: shown, not hidden (weights are exact)
    weights_diff_k = {"conv1": 9408 / 1024 - 2.7, "inception3b": -1.0, "inception4a": 2.75,
                      "inception4b": 1.0, "inception4c": 34.5, "inception4d": 10.5,
                      "inception4e": 7.0, "inception5a": -54.0, "inception5b": 21.0}
    for name, diff in weights_diff_k.items():
        assert math.isclose(by[name]["params_k_diff"], diff), name
    assert by["conv1"]["weights"] == 9408 and by["conv1"]["macs"] == 118_013_952
    assert by["conv1"]["ops_m_diff"] > 80
    assert by["inception5a"]["weights"] == 1_042_432 and by["inception5a"]["ops_m_diff"] < -2.5
    assert by["inception5b"]["weights"] == 1_442_816
    total = by["total"]
    assert total["weights"] == _profile("googlenet").totals.weights
    assert math.isclose(total["paper_ops_m"], 1502)
    assert math.isclose(total["paper_params_k"], 6797.7)
    assert total["macs"] == 1_582_671_872


def test_comparison_of_a_recipe_with_other_layers():
    comparison = compare_with_paper(_profile("googlenet-small"))
    names = [c["name"] for c in comparison]
    assert "maxpool1" not in names and "conv2+conv3" in names
    missing = [c["paper"] for c in comparison if c["name"] is None]
    assert missing == ["max pool", "softmax"]  # no maxpool1 at 32x32; no softmax layer
    assert comparison[-1]["name"] == "total"


# ------------------------------------------------------------------------- JSON and table


def test_json_schema():
    p = _profile("googlenet")
    doc = json.loads(json.dumps(p.to_json(paper=True)))
    assert set(doc) == {"schema", "recipe", "input_size", "rows", "aux", "totals", "paper"}
    assert "paper" not in p.to_json()
    assert doc["schema"] == SCHEMA and doc["recipe"] == "googlenet" and doc["input_size"] == 224
    row_keys = {"name", "module", "type", "label", "patch", "output", "depth", "widths",
                "params", "weights", "macs"}
    for row in doc["rows"] + [r for a in doc["aux"] for r in a["rows"]]:
        assert set(row) == row_keys
        assert set(row["widths"]) == set(WIDTH_KEYS)
        assert len(row["output"]) == 3 and all(isinstance(v, int) for v in row["output"])
        assert all(isinstance(row[k], int) for k in ("params", "weights", "macs", "depth"))
    r3a = next(r for r in doc["rows"] if r["name"] == "inception3a")
    assert r3a["module"] == "blocks.inception3a" and r3a["output"] == [28, 28, 256]
    assert r3a["widths"] == {"1x1": 64, "3x3_reduce": 96, "3x3": 128, "5x5_reduce": 16,
                             "5x5": 32, "pool_proj": 32}
    assert [a["name"] for a in doc["aux"]] == ["aux1", "aux2"]
    assert set(doc["aux"][0]) == {"name", "after", "rows", "params", "weights", "macs"}
    assert doc["totals"] == {"params": 6_998_552, "weights": p.totals.weights,
                             "macs": 1_582_671_872, "depth": 22,
                             "params_with_aux": _cost("googlenet").params_with_aux,
                             "macs_with_aux": p.totals.macs_with_aux}
    cmp_keys = {"name", "paper", "patch", "paper_patch", "output", "paper_output", "depth",
                "paper_depth", "weights", "weights_k", "paper_params_k", "params_k_diff", "macs",
                "ops_m", "paper_ops_m", "ops_m_diff"}
    assert all(set(c) == cmp_keys for c in doc["paper"])


def _text(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_render():
    p = _profile("googlenet")
    text = _text(render_table1(p))
    for needle in ("inception (3a)", "inception (5b)", "dropout (40%)", "7x7/2", "112x112x64",
                   "total", "6,998,552", "1.583 G", "aux1.fc1", "aux2 total"):
        assert needle in text, needle
    paper = _text(render_table1(p, paper=True))
    for needle in ("conv2+conv3", "paper", "weights", "+84.0M", "-54.0K", "+34.5K", "softmax",
                   "6,998,552"):
        assert needle in paper, needle
    assert "lrn1" in text and "lrn1" not in paper
    # a paper row the recipe has no layer for fills only the paper's columns, never ours
    small = _text(render_table1(_profile("googlenet-small"), paper=True)).splitlines()
    row = next(line for line in small if line.lstrip("│ ").startswith("(max pool)"))
    assert "paper only" in row and "3x3/2" not in row and "56x56x64" not in row


# ------------------------------------------------------------------------------ input size


def test_other_input_sizes():
    p, cost = _profile("googlenet-small", 64), _cost("googlenet-small", 64)
    assert p.input_size == 64
    assert (p.totals.params, p.totals.macs) == (cost.params, cost.macs)
    assert p.totals.macs > _profile("googlenet-small").totals.macs
    assert p.row("inception5b").output[:2] == (8, 8)  # 4x4 at 32
    with pytest.raises(RecipeError, match="too small"):
        table1(load_recipe("googlenet"), 16)
