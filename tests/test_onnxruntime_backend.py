"""The onnxruntime backend: registry, availability, sessions and their input checks, metadata."""

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from inceptionctl import InceptionError, build_model
from inceptionctl.backend import BackendUnavailable, backend_for, get_backend, open_artifact
from inceptionctl.checkpoint import save_checkpoint
from inceptionctl.export import export_onnx

from .test_export import QUIET, lively, tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The tiny recipe (16x16, 10 classes) exported with batch range 1:2:5."""
    tmp = tmp_path_factory.mktemp("ort")
    recipe = tiny(tmp)
    ckpt = save_checkpoint(tmp / "tiny.pt", lively(build_model(recipe)), recipe)
    return Path(export_onnx(ckpt, batch="1:2:5", **QUIET).file)


@pytest.fixture
def backend():
    return get_backend("onnxruntime")


def test_registered_through_the_entry_point(backend):
    from inceptionctl.backends.onnxruntime import OnnxRuntimeBackend

    assert isinstance(backend, OnnxRuntimeBackend)
    assert (backend.name, backend.package, backend.suffixes) == ("onnxruntime", "onnxruntime",
                                                                 (".onnx",))
    assert isinstance(backend_for(Path("m.onnx")), OnnxRuntimeBackend)
    assert "onnxruntime-gpu" in backend.install_hint


def test_availability_reports_version_and_devices(backend):
    import onnxruntime

    av = backend.availability()
    assert av.available and av.version == onnxruntime.__version__
    assert av.devices[0] == "cpu"
    assert ("CUDAExecutionProvider" in onnxruntime.get_available_providers()) == \
        any(d.startswith("cuda") for d in av.devices)


def test_availability_without_onnxruntime(backend, monkeypatch):
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails, as if absent
    av = backend.availability()
    assert not av.available
    assert av.reason == "onnxruntime not installed: pip install onnxruntime (or onnxruntime-gpu)"
    with pytest.raises(BackendUnavailable, match="backend 'onnxruntime' is not available: "
                                                 "onnxruntime not installed") as err:
        backend.require()
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_the_core_never_imports_onnxruntime_or_tensorrt():
    """Statically: no module of inceptionctl/ imports them; at run time: importing every core
    module (export and compare included) leaves them unimported."""
    offenders = []
    for path in sorted((ROOT / "inceptionctl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] in ("onnxruntime", "tensorrt")]
    assert offenders == []
    code = ("import sys, inceptionctl.export, inceptionctl.compare, inceptionctl.backend, "
            "inceptionctl.cli; bad = [m for m in ('onnxruntime', 'tensorrt') if m in sys.modules];"
            " print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_session_runs_and_describes_the_artifact(backend, tiny_onnx):
    with backend.open(tiny_onnx, threads=1) as session:
        info = session.info
        assert (info.kind, info.precision, info.batch_range) == ("onnx", "fp32", (1, 5))
        assert info.classes == [str(i) for i in range(10)] and info.channels == 3
        assert info.preprocessing["eval_size"] == 16
        assert info.extra["backend"] == "onnxruntime"
        assert info.extra["providers"] == ["CPUExecutionProvider"]
        assert info.extra["threads"] == 1
        out = session.run(torch.randn(3, 3, 16, 16))
        assert out.shape == (3, 10) and out.dtype == torch.float32 and out.device.type == "cpu"
    with pytest.raises(InceptionError, match="the session is closed"):
        session.run(torch.randn(1, 3, 16, 16))
    with open_artifact(tiny_onnx) as again:  # the registry picks this backend by suffix
        assert type(again).__name__ == "OnnxRuntimeSession"


@pytest.mark.parametrize("batch, message", [
    (torch.randn(3, 16, 16), r"input must be \[N, C, H, W\], got shape \[3, 16, 16\]"),
    (torch.randn(2, 3, 16, 16, dtype=torch.float64), "dtype must be torch.float32, got "
                                                     "torch.float64"),
    (torch.randn(2, 1, 16, 16), "must have 3 channels, got 1"),
    (torch.randn(2, 3, 17, 17), "input must be 16x16, got 17x17"),
    (torch.randn(6, 3, 16, 16), "batch 6 is outside the artifact's range 1..5"),
    ("not a tensor", "input must be a tensor, got str"),
])
def test_session_input_checks_name_what_is_wrong(backend, tiny_onnx, batch, message):
    with backend.open(tiny_onnx) as session:
        with pytest.raises(InceptionError, match=message) as err:
            session.run(batch)
    assert str(tiny_onnx) in str(err.value) and "\n" not in str(err.value)


def test_devices_and_threads(backend, tiny_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(InceptionError, match="--device cuda: onnxruntime .* no "
                                                 "CUDAExecutionProvider.*onnxruntime-gpu"):
            backend.open(tiny_onnx, device="cuda")
    with pytest.raises(InceptionError, match="--device tpu: expected auto, cpu, cuda or cuda:N"):
        backend.open(tiny_onnx, device="tpu")
    with pytest.raises(InceptionError, match="threads: expected 0"):
        backend.open(tiny_onnx, threads=-1)
    with backend.open(tiny_onnx, providers=["cpu"]) as session:
        assert session.device == "cpu"


def test_an_onnx_file_without_our_metadata_is_refused(backend, tmp_path, tiny_onnx):
    foreign = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), str(foreign),
                          input_names=["x"], dynamo=False)
    with pytest.raises(InceptionError) as err:
        backend.open(foreign)
    text = str(err.value)
    assert text.startswith(f"{foreign}: not an inceptionctl model") and "\n" not in text
    assert "inceptionctl.recipe" in text and "name its preprocessing and classes with --recipe" in text

    stripped = tmp_path / "stripped.onnx"
    model = onnx.load(str(tiny_onnx))
    keep = [p for p in model.metadata_props if p.key != "inceptionctl.preprocessing"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.save(model, str(stripped))
    with pytest.raises(InceptionError, match="incomplete inceptionctl metadata: missing "
                                             "inceptionctl.preprocessing"):
        backend.open(stripped)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(InceptionError, match="garbage.onnx: not a readable ONNX model"):
        backend.open(garbage)
    with pytest.raises(InceptionError, match="no such file"):
        backend.open(tmp_path / "missing.onnx")


def test_metadata_that_contradicts_the_graph_is_refused(backend, tmp_path, tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    for p in model.metadata_props:
        if p.key == "inceptionctl.classes":
            p.value = '["a", "b"]'
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(InceptionError, match="metadata names 2 classes, the graph outputs 10"):
        backend.open(bad)


def test_quantize_int8_rejects_unknown_options(backend, tiny_onnx, tmp_path):
    calib = [torch.randn(4, 3, 16, 16)]
    with pytest.raises(InceptionError, match="int8 flavour 'gpu'"):
        backend.quantize_int8(tiny_onnx, tmp_path / "q.onnx", calib, flavour="gpu")
    with pytest.raises(InceptionError, match="calibration method 'mse'"):
        backend.quantize_int8(tiny_onnx, tmp_path / "q.onnx", calib, method="mse")
    with pytest.raises(InceptionError, match="no calibration samples"):
        backend.quantize_int8(tiny_onnx, tmp_path / "q.onnx", [])
    settings = backend.quantize_int8(tiny_onnx, tmp_path / "q.onnx", calib,
                                     metadata={"inceptionctl.precision": "int8"})
    assert settings["flavour"] == "cpu" and settings["calibration_samples"] == 4
    with backend.open(tmp_path / "q.onnx") as session:
        assert session.info.precision == "int8" and session.info.batch_range == (1, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # nothing left behind


def test_a_foreign_onnx_takes_its_precision_from_its_graph(backend, tiny_onnx, tmp_path, cli):
    """Our fp32, fp16 and INT8 exports with their metadata removed: the graph says fp32, fp16
    (float16 weights) and int8 (QDQ nodes), so compare judges an INT8 file from elsewhere by
    top-1 agreement, as ours, not by fp32's element tolerances."""
    recipe = tiny(tmp_path)
    ckpt = tiny_onnx.parent / "tiny.pt"
    made = {"fp32": tiny_onnx,
            "fp16": Path(export_onnx(ckpt, out=tmp_path / "h.onnx", precision="fp16",
                                     batch="1:2:5", **QUIET).file)}
    backend.quantize_int8(tiny_onnx, tmp_path / "q.onnx", [torch.randn(4, 3, 16, 16)])
    made["int8"] = tmp_path / "q.onnx"
    for precision, path in made.items():
        model = onnx.load(str(path))
        del model.metadata_props[:]
        foreign = tmp_path / f"foreign-{precision}.onnx"
        onnx.save(model, str(foreign))
        with open_artifact(foreign, "onnxruntime", recipe=recipe) as session:
            assert session.info.precision == precision, path
            assert session.info.extra.get("recipe_used", True)
    # a recipe whose crops the graph cannot take: named at open, the graph's size and the recipe's
    wide = tiny(tmp_path, ["data.input_size=20", "eval.size=20", "data.resize=22",
                           "eval.scales=[22]"])
    with pytest.raises(InceptionError, match=r"foreign-fp32.onnx: the graph takes 16x16 inputs, "
                                             r"the recipe given \(--recipe\) makes 20x20 crops"):
        open_artifact(tmp_path / "foreign-fp32.onnx", "onnxruntime", recipe=wide)
    # another interpolation in the recipe: compare runs and says so
    note = cli("compare", ckpt, tmp_path / "foreign-fp32.onnx", "--recipe", str(recipe.source),
               "--set", "data.interpolation=bicubic", "--samples", "4", "--json")
    assert any(n.startswith("interpolation differs (bilinear vs bicubic)")
               for n in json.loads(note.stdout)["notes"]), note.stdout
    done = cli("compare", ckpt, tmp_path / "foreign-int8.onnx", "--recipe", str(recipe.source),
               "--samples", "16", "--json")
    report = json.loads(done.stdout)
    assert report["precision_b"] == "int8" and "top-1 agreement" in report["criterion"], report


def test_a_foreign_onnx_with_a_recipe_is_evaluated_like_ours(tmp_path, cli):
    """torchvision's googlenet exported by torch.onnx.export alone (no metadata of ours) gives,
    with --recipe naming its preprocessing and classes, the same predictions as our export of
    the same weights; without --recipe the error says --recipe is the way."""
    import json

    import torchvision

    torch.manual_seed(5)
    tv = torchvision.models.googlenet(weights=None, num_classes=10, aux_logits=False,
                                      transform_input=False, init_weights=True).eval()
    with torch.no_grad():  # a classifier of the features' deviations, so images disagree
        from inceptionctl.data import digits

        x = digits(72, "val").images[:60, :, 4:68, 4:68].float() / 255
        fc, tv.fc = tv.fc, nn.Identity()
        feats = tv((x - 0.5) / 0.5)
        tv.fc = fc
        fc.weight.copy_(torch.randn(10, feats.shape[1]) / feats.std(0).clamp_min(1e-6))
        fc.bias.copy_(-fc.weight @ feats.mean(0))
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    foreign = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tv, (torch.zeros(1, 3, 64, 64),), str(foreign), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          opset_version=17, dynamo=False)
    sets = ["--set", "model.num_classes=10", "--set", "data.input_size=64", "--set",
            "eval.size=64", "--set", "data.resize=72", "--set", "eval.scales=[72]"]
    out = cli("export", tmp_path / "tv.pth", "--recipe", "googlenet-bn", *sets, "--to", "onnx",
              "--out", tmp_path / "ours.onnx", "--device", "cpu")
    assert out.exit_code == 0, out.stderr

    refused = cli("eval", foreign, "--limit", "8")
    assert refused.exit_code == 2 and "--recipe" in refused.stderr.strip().splitlines()[-1]

    args = ["--limit", "60", "--workers", "0", "--json"]
    theirs = cli("eval", foreign, "--recipe", "googlenet-bn", *sets, *args)
    assert theirs.exit_code == 0, theirs.stderr
    ours = cli("eval", tmp_path / "ours.onnx", *args)
    assert ours.exit_code == 0, ours.stderr
    a, b = json.loads(theirs.stdout), json.loads(ours.stdout)
    assert a["images"] == b["images"] == 60 and a["backend"] == "onnxruntime"
    assert a["top1"] == b["top1"] and a["confusion"] == b["confusion"]
    assert sum(1 for row in zip(*a["confusion"]) if sum(row)) > 1  # not one class for all

    # a run's recipe.yaml names the same preprocessing and classes
    recipe = tmp_path / "recipe.yaml"
    from inceptionctl import load_recipe

    recipe.write_text(load_recipe("googlenet-bn", [s for s in sets if s != "--set"]).to_yaml())
    again = cli("eval", foreign, "--recipe", recipe, *args)
    assert again.exit_code == 0 and json.loads(again.stdout)["confusion"] == a["confusion"]
    # a recipe of another class count: the count is the recipe's, as the error says
    other = cli("eval", foreign, "--recipe", "googlenet-bn", *sets[2:], *args)
    assert other.exit_code == 2 and other.stderr.strip().splitlines()[-1] == (
        f"error: {foreign}: the recipe given (--recipe) has 1000 classes, the graph outputs 10 "
        "logits")


def _qdq_conv(c_in: int, c_out: int, kernel: tuple[int, int], pads: list[int],
              size: tuple[int, int], stride: int = 2, seed: int = 0,
              int32_bias: bool = False) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv (int8 per-channel weights, float bias or, as quantize_static
    writes it, int32 through a DequantizeLinear) -> Q -> DQ -> output, the shape quantize_static
    gives a first convolution (ONNX Runtime runs it as QLinearConv)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    # 7-bit weights, as quantize_int8 writes them: 8-bit ones saturate on a CPU without VNNI,
    # differently for each order of the products
    w = rng.integers(-64, 65, (c_out, c_in, *kernel), dtype=np.int8)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("sx", np.array(0.02, np.float32)), ("zx", np.array(131, np.uint8)),
        ("w", w), ("sw", rng.uniform(1e-3, 4e-3, c_out).astype(np.float32)),
        ("zw", np.zeros(c_out, np.int8)), ("b", rng.standard_normal(c_out).astype(np.float32)),
        ("sy", np.array(0.05, np.float32)), ("zy", np.array(7, np.uint8)))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="conv1",
                              kernel_shape=list(kernel), strides=[stride, stride], pads=pads),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"])]
    if int32_bias:
        sw = numpy_helper.to_array(inits[3])
        inits[5] = numpy_helper.from_array(
            rng.integers(-5000, 5000, c_out).astype(np.int32), "b_q")
        inits += [numpy_helper.from_array((0.02 * sw).astype(np.float32), "sb"),
                  numpy_helper.from_array(np.zeros(c_out, np.int32), "zb")]
        nodes.insert(2, helper.make_node("DequantizeLinear", ["b_q", "sb", "zb"], ["b"], axis=0))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c_in, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c_out, "h", "w"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_run(model: onnx.ModelProto, x) -> "np.ndarray":
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("c_in,c_out,kernel,pads,size,int32_bias", [
    (3, 16, (7, 7), [3, 3, 3, 3], (38, 32), True),  # GoogLeNet's conv1, as quantize_static
    (3, 16, (7, 7), [3, 3, 3, 3], (37, 28), False),  # writes it; an odd height
    (3, 8, (3, 3), [1, 1, 1, 1], (17, 16), True),
    (4, 8, (5, 4), [2, 1, 0, 2], (23, 20), False),  # uneven kernel and pads
    (4, 8, (5, 6), [0, 5, 1, 4], (9, 24), True),    # a left pad over one cell
    (2, 4, (2, 2), [0, 0, 0, 0], (12, 16), False)])
def test_space_to_depth_stem_gives_the_same_output_bit_for_bit(c_in, c_out, kernel, pads, size,
                                                               int32_bias):
    """The stride-2 stem reads 4-column cells and writes both output phases as channels, and
    ONNX Runtime returns exactly what it returned before (the same integer sums, requantized
    the same)."""
    import copy

    import numpy as np

    from inceptionctl.backends.onnxruntime import space_to_depth_stem

    # with the shapes inferred, as a checker or an optimizer leaves them: those that change go
    model = onnx.shape_inference.infer_shapes(
        _qdq_conv(c_in, c_out, kernel, pads, size, int32_bias=int32_bias))
    x = np.random.default_rng(1).uniform(-2.5, 2.5, (3, c_in, *size)).astype(np.float32)
    folded = copy.deepcopy(model)
    assert space_to_depth_stem(folded)
    onnx.checker.check_model(folded, full_check=True)
    conv = next(n for n in folded.graph.node if n.name == "conv1")
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    assert attrs["strides"] == [2, 1] and attrs["kernel_shape"][0] == kernel[0]
    weights = next(t for t in folded.graph.initializer if t.name == "w")
    assert list(weights.dims)[:2] == [2 * c_out, 4 * c_in]
    assert [n.op_type for n in folded.graph.node].count("Conv") == 1
    before, after = _ort_run(model, x), _ort_run(folded, x)
    assert before.shape == after.shape and np.array_equal(before, after)


def test_space_to_depth_stem_leaves_other_first_convolutions_alone():
    from inceptionctl.backends.onnxruntime import space_to_depth_stem

    for declined in (_qdq_conv(3, 8, (3, 3), [1, 1, 1, 1], (16, 16), stride=1),
                     _qdq_conv(3, 8, (3, 3), [1, 1, 1, 1], (16, 18)),   # width not 4k
                     _qdq_conv(3, 8, (3, 3), [0, 0, 0, 0], (16, 12))):  # 5 output columns
        before = declined.SerializeToString()
        assert not space_to_depth_stem(declined) and declined.SerializeToString() == before
    odd_cells = _qdq_conv(3, 8, (3, 3), [1, 1, 1, 1], (16, 20))  # 10 columns in 5 cells: fine
    assert space_to_depth_stem(odd_cells)
    dynamic = _qdq_conv(3, 8, (3, 3), [1, 1, 1, 1], (16, 16))
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"  # size unknown
    assert not space_to_depth_stem(dynamic)


def _set(model, **arrays) -> None:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))


def test_space_to_depth_stem_declines_what_it_could_not_copy_exactly():
    """Per-channel input scales (a reshape would mix them), weights quantized along another axis,
    weights, a bias or an input read by another node too, an output with two readers, int8
    activations (ONNX Runtime would run a float Conv), one output channel, a name the rewrite
    would add, a subgraph that could read what it rewrites: the rewrite could not keep them,
    so the graph is left as it was."""
    import numpy as np
    from onnx import helper, numpy_helper

    from inceptionctl.backends.onnxruntime import space_to_depth_stem

    def stem():
        return _qdq_conv(3, 8, (7, 7), [3, 3, 3, 3], (20, 20))

    assert space_to_depth_stem(stem())  # as it is, it folds

    per_channel_input = stem()
    _set(per_channel_input, sx=np.array([0.02, 0.03, 0.025], np.float32),
         zx=np.array([131, 120, 128], np.uint8))
    for n in per_channel_input.graph.node[:2]:
        n.attribute.append(helper.make_attribute("axis", 1))
    weights_by_input_channel = stem()
    _set(weights_by_input_channel, sw=np.array([2e-3, 3e-3, 1e-3], np.float32),
         zw=np.zeros(3, np.int8))
    weights_by_input_channel.graph.node[2].attribute[0].i = 1
    shared_weights = stem()
    shared_weights.graph.node.append(helper.make_node(
        "Conv", ["xd", "wd", "b"], ["c2"], kernel_shape=[7, 7], strides=[2, 2], pads=[3] * 4))
    shared_bias = stem()
    shared_bias.graph.node.append(helper.make_node("Relu", ["b"], ["b2"]))
    shared_input = stem()
    shared_input.graph.node.append(helper.make_node("Relu", ["xd"], ["x2"]))
    two_readers = stem()
    two_readers.graph.node.append(helper.make_node("Relu", ["c"], ["c2"]))
    int8_input, int8_output = stem(), stem()
    _set(int8_input, zx=np.array(3, np.int8))
    _set(int8_output, zy=np.array(3, np.int8))
    one_channel = _qdq_conv(3, 1, (7, 7), [3, 3, 3, 3], (20, 20), int32_bias=True)
    name_taken = stem()
    name_taken.graph.node.append(helper.make_node("Relu", ["y"], ["conv1_phases"]))
    subgraph = stem()
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["w2"])], "then", [],
                             [helper.make_tensor_value_info("w2", onnx.TensorProto.INT8, None)])
    subgraph.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    subgraph.graph.node.append(helper.make_node("If", ["cond"], ["w3"], then_branch=then,
                                                else_branch=then))
    for model in (per_channel_input, weights_by_input_channel, shared_weights, shared_bias,
                  shared_input, two_readers, int8_input, int8_output, one_channel, name_taken,
                  subgraph):
        before = model.SerializeToString()
        assert not space_to_depth_stem(model) and model.SerializeToString() == before


def _stem_net_onnx(path: Path) -> Path:
    """A small fp32 ONNX with a 7x7/2 stem, another convolution and a classifier: ``path``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 40, 40),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}}, opset_version=17,
                          dynamo=False)
    return path


def test_int8_cpu_flavour_folds_a_stride_2_stem(backend, tmp_path, monkeypatch):
    """quantize_int8's cpu flavour splits a 7x7/2 stem (the same output as without), the
    tensorrt flavour keeps it."""
    import numpy as np
    import onnxruntime as ort

    import inceptionctl.backends.onnxruntime as ort_backend

    fp32 = _stem_net_onnx(tmp_path / "net.onnx")
    calib = [torch.randn(8, 3, 40, 40)]
    x = np.random.default_rng(2).standard_normal((4, 3, 40, 40)).astype(np.float32)

    def run(path: Path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]

    assert backend.quantize_int8(fp32, tmp_path / "a.onnx", calib)["stem_space_to_depth"]
    monkeypatch.setattr(ort_backend, "space_to_depth_stem", lambda model: False)
    assert not backend.quantize_int8(fp32, tmp_path / "b.onnx", calib)["stem_space_to_depth"]
    monkeypatch.undo()
    assert np.array_equal(run(tmp_path / "a.onnx"), run(tmp_path / "b.onnx"))
    strides = [list(a.ints) for n in onnx.load(str(tmp_path / "a.onnx")).graph.node
               if n.op_type == "Conv" for a in n.attribute if a.name == "strides"]
    assert strides[:2] == [[2, 1], [1, 1]]  # the stem over cells, then the next conv
    trt = backend.quantize_int8(fp32, tmp_path / "t.onnx", calib, flavour="tensorrt")
    assert trt["stem_space_to_depth"] is False


@pytest.mark.parametrize("fp32_file", ["ours", "with an LRN op"])
def test_int8_quantizes_an_unfolded_lrn_but_its_power(backend, tmp_path, fp32_file):
    """x * x, the window and x * p are 8-bit like any Mul or Conv; the power p = s^-0.75
    (two square roots and a division) runs in fp32 between them. An fp32 file that still has
    ONNX's LRN op (written before LRN was unfolded) is unfolded first."""
    from inceptionctl.artifact import lrn_step, write_onnx
    from inceptionctl.model import LocalResponseNorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        LocalResponseNorm(16, 5, 1e-4, 0.75, 1.0), nn.MaxPool2d(2),
                        nn.Conv2d(16, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    if fp32_file == "ours":
        fp32 = write_onnx(net, {"eval_size": 16}, (1, 2, 4), 17, {}, tmp_path / "n.onnx")
    else:
        fp32 = tmp_path / "old.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.rand(2, 3, 16, 16),), str(fp32), opset_version=17,
                              input_names=["images"], dynamic_axes={"images": {0: "n"}},
                              dynamo=False)
        assert "LRN" in [n.op_type for n in onnx.load(str(fp32)).graph.node]
    backend.quantize_int8(fp32, tmp_path / "q.onnx", [torch.rand(8, 3, 16, 16) * 4])
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    steps = {lrn_step(n): n for n in graph.node if lrn_step(n)}
    assert [n.op_type for n in steps.values()] == ["Mul", "Conv", "Sqrt", "Sqrt", "Div", "Mul"]
    for name in ("square", "window", "normalize"):  # 8-bit: every input dequantized
        assert {producer.get(i) for i in steps[name].input} == {"DequantizeLinear"}, name
        assert consumers[steps[name].output[0]] == ["QuantizeLinear"], name
    for name in ("sqrt", "sqrt2"):  # fp32: float in, float out
        assert consumers[steps[name].output[0]] != ["QuantizeLinear"], name
    assert producer[steps["sqrt2"].input[0]] == "Sqrt"
    assert consumers[steps["power"].output[0]] == ["QuantizeLinear"]


def test_eval_says_a_batch_size_outside_the_files_range_and_records_the_one_run(tiny_onnx, cli):
    """--batch-size 100 on a file exported for batches 1 to 5 ran at 5 without a word."""
    import json

    out = cli("eval", tiny_onnx, "--batch-size", "100", "--limit", "3", "--workers", "0",
              "--json")
    assert out.exit_code == 0, out.stderr
    assert f"--batch-size 100: running batches of 5 (the batch range of {tiny_onnx} 1:5)" in \
        out.stderr
    assert json.loads(out.stdout)["batch_size"] == 5
    fits = cli("eval", tiny_onnx, "--batch-size", "4", "--limit", "3", "--workers", "0", "--json")
    assert "running batches" not in fits.stderr and json.loads(fits.stdout)["batch_size"] == 4


@pytest.mark.parametrize("flavour", ["cpu", "tensorrt"])
def test_int8_weights_stay_in_7_bits_so_no_cpu_saturates(backend, tmp_path, flavour):
    """A CPU without VNNI multiplies u8 x s8 with VPMADDUBSW, which saturates an int16 sum of
    two products above 32,767: every weight is at most 64 in magnitude (255 x 64 x 2 fits, 255 x
    127 x 2 does not), and each output channel's largest weight uses that range."""
    import numpy as np
    from onnx import numpy_helper

    fp32 = _stem_net_onnx(tmp_path / "net.onnx")
    said: list[str] = []
    settings = backend.quantize_int8(fp32, tmp_path / "q.onnx", [torch.randn(8, 3, 40, 40)],
                                     flavour=flavour, log=said.append)
    assert settings["reduce_range"] is True
    assert any("per-channel weights in 7 bits" in line for line in said)
    model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim >= 2]
    assert len(weights) == 3  # the two convolutions and the classifier
    for w in weights:
        per_channel = np.abs(w.astype(np.int32)).reshape(w.shape[0], -1).max(axis=1)
        assert per_channel.max() <= 64 and per_channel.min() >= 63
