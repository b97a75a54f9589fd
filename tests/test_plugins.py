"""Backends are plugins: a third-party package registers one exactly as the built-ins are, and
what it declares (precisions, an engine builder) is what ``profile --time`` and ``export`` use."""

import json
import textwrap

import pytest

from inceptionctl.backend import backend_names, get_backend, open_artifact

PLUGIN = '''
import json
import shutil
from pathlib import Path

import torch

from inceptionctl.artifact import read_onnx_metadata
from inceptionctl.backend import ArtifactInfo, Availability, Backend, Session


class ConstSession(Session):
    """Answers class 1 for every image; the artifact is a small JSON file."""

    def __init__(self, path):
        spec = json.loads(Path(path).read_text())
        self.info = ArtifactInfo(path=str(path), kind="const", recipe={}, classes=spec["classes"],
                                 preprocessing=spec["preprocessing"], batch_range=(1, 4),
                                 extra={"backend": "const"})

    def run(self, batch):
        self.check_input(batch, self.info.preprocessing["eval_size"])
        logits = torch.zeros(len(batch), len(self.info.classes))
        logits[:, 1] = 5.0
        return logits


class ConstBackend(Backend):
    name = "const"
    package = "constplug"
    install_hint = "pip install constplug"
    suffixes = (".const",)

    def availability(self):
        return Availability(True, "", "0.1", ("cpu",))

    def open(self, path, device="cpu", **options):
        return ConstSession(path)

    # Timed in the precisions it declares, on an artifact it makes from the core's ONNX.
    precisions = ("fp32", "int8")

    def make_artifact(self, checkpoint, precision, ctx):
        meta = read_onnx_metadata(ctx.onnx())
        out = ctx.workdir / f"model.{precision}.const"
        out.write_text(json.dumps({"classes": meta["classes"],
                                   "preprocessing": meta["preprocessing"]}))
        return out, {}


class CopySession(Session):
    """Runs the ONNX its "engine" is a copy of, with onnxruntime."""

    def __init__(self, path):
        import onnxruntime

        meta = read_onnx_metadata(path)
        lo, _, hi = meta["batch"]
        self.info = ArtifactInfo(path=str(path), kind="engine", recipe=meta["recipe"],
                                 classes=meta["classes"], preprocessing=meta["preprocessing"],
                                 batch_range=(lo, hi), extra={"backend": "onnxcopy"})
        self.sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, batch):
        self.check_input(batch, self.info.preprocessing["eval_size"])
        (out,) = self.sess.run(None, {"images": batch.numpy()})
        return torch.from_numpy(out)


class OnnxCopyBackend(Backend):
    """An engine builder: its engine is the ONNX, copied (declares EngineBuilder's members)."""

    name = "onnxcopy"
    suffixes = (".oc",)
    builds = ("fp32",)
    int8_flavour = None

    def availability(self):
        return Availability(True, "", "0.1", ("cpu",))

    def open(self, path, device="cpu", **options):
        return CopySession(path)

    def build_engine(self, onnx_path, out, precision, batch, calib_batches, log, *, device):
        shutil.copyfile(onnx_path, out)
        return Path(out)


class RaisingBackend(Backend):
    """A plugin whose availability check itself fails."""
    name = "raising"
    suffixes = (".rz",)

    def availability(self):
        raise RuntimeError("boom in availability")

    def open(self, path, device="cpu", **options):
        raise AssertionError("never opened")


class BadOpenBackend(Backend):
    """Available, but its open fails with a plain exception."""
    name = "badopen"
    suffixes = (".bo",)

    def availability(self):
        return Availability(True, "", "0.1", ("cpu",))

    def open(self, path, device="cpu", **options):
        raise OSError("boom in open")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install 'constplug' (a module and its dist-info with the entry point) on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "constplug.py").write_text(PLUGIN)
    info = site / "constplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: constplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [inceptionctl.backends]
        const = constplug:ConstBackend
        onnxcopy = constplug:OnnxCopyBackend
        broken = constplug_missing:Nothing
        raising = constplug:RaisingBackend
        badopen = constplug:BadOpenBackend
        """))
    monkeypatch.syspath_prepend(str(site))
    return tmp_path


def test_third_party_backend_is_discovered(plugin, cli):
    assert backend_names()[:2] == ["torch", "onnxruntime"]
    assert {"const", "broken"} <= set(backend_names())
    assert get_backend("const").availability().version == "0.1"
    out = cli("backends", "--json")
    rows = {r["name"]: r for r in json.loads(out.stdout)["backends"]}
    assert rows["const"]["available"] and rows["const"]["opens"] == [".const"]
    assert not rows["broken"]["available"] and "failed to load" in rows["broken"]["reason"]


def test_third_party_backend_runs_eval(plugin, cli):
    artifact = plugin / "model.const"
    artifact.write_text(json.dumps({"classes": [str(i) for i in range(10)],
                                    "preprocessing": {"eval_size": 32, "eval_scales": [36, 41, 46, 50],
                                                      "resize": 36, "mean": [0.5] * 3,
                                                      "std": [0.5] * 3, "channels": 3}}))
    out = cli("eval", artifact, "--data", "digits", "--workers", "0", "--limit", "20", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["backend"] == "const" and data["images"] == 20
    # every prediction is class 1: top-1 is the share of 1s among the first 20 val digits
    from inceptionctl.data import digits

    ones = int((digits(36, "val").targets[:20] == 1).sum())
    assert data["top1"] == pytest.approx(100.0 * ones / 20)
    with open_artifact(artifact) as session:
        import torch

        with pytest.raises(Exception, match="batch 5 is outside the artifact's range 1..4"):
            session.run(torch.zeros(5, 3, 32, 32))
        with pytest.raises(Exception, match="input must be 32x32, got 30x30"):
            session.run(torch.zeros(2, 3, 30, 30))


def test_broken_plugin_is_one_clear_error(plugin, cli):
    (plugin / "x.const").write_text("{}")
    out = cli("eval", plugin / "x.const", "--backend", "broken")
    assert out.exit_code == 2
    assert "backend 'broken' failed to load from constplug_missing:Nothing" in out.stderr


def test_a_plugin_is_timed_in_the_precisions_it_declares(plugin, cli, tiny_recipe):
    out = cli("profile", "--recipe", tiny_recipe, "--time", "--backend", "const,onnxcopy",
              "--precision", "fp32,bf16,int8", "--batch", "2", "--iters", "1", "--warmup", "0",
              "--json")
    assert out.exit_code == 0, out.stderr
    rows = json.loads(out.stdout)["speed"]["rows"]
    assert {(r["backend"], r["precision"], r["batch"]) for r in rows if r["available"]} == {
        ("const", "fp32", 2), ("const", "int8", 2),  # what it declares, nothing else
        ("onnxcopy", "fp32", 2)}                     # an engine builder: its engine, timed
    assert all(r["available"] for r in rows), [r["reason"] for r in rows]


def test_a_plugin_that_builds_engines_is_an_export_target(plugin, cli, tmp_path):
    from inceptionctl import build_model, load_recipe
    from inceptionctl.checkpoint import save_checkpoint
    from inceptionctl.export import targets

    assert targets()[0] == "onnx" and "onnxcopy" in targets() and "const" not in targets()
    recipe = load_recipe("googlenet-small")
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(recipe), recipe)
    out = cli("export", ckpt, "--to", "onnxcopy", "--batch", "1:2:4", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["file"] == str(tmp_path / "m.oc") and data["passed"]
    assert data["parity"]["batch_sizes"] == [1, 2, 4]
    typo = cli("export", ckpt, "--to", "onnxcopyy")
    assert typo.exit_code == 2 and "did you mean 'onnxcopy'" in typo.stderr
    fp16 = cli("export", ckpt, "--to", "onnxcopy", "--precision", "fp16")
    assert fp16.exit_code == 2 and "--precision 'fp16': expected one of fp32" in fp16.stderr


def test_an_engine_is_built_from_an_exported_onnx(plugin, cli, tmp_path):
    """Export once, build on each target: `export MODEL.onnx --to ENGINE`, checked against the
    ONNX itself (there is no checkpoint on the target machine)."""
    from inceptionctl import build_model, load_recipe
    from inceptionctl.checkpoint import save_checkpoint

    recipe = load_recipe("googlenet-small")
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model(recipe), recipe)
    assert cli("export", ckpt, "--to", "onnx", "--batch", "1:2:4").exit_code == 0
    ckpt.unlink()
    out = cli("export", tmp_path / "m.onnx", "--to", "onnxcopy", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["file"] == str(tmp_path / "m.oc") and data["passed"]
    assert data["source"] == str(tmp_path / "m.onnx") and data["opset"] == 17
    assert data["batch"] == "1:2:4" and data["parity"]["max_abs_diff"] == 0.0
    assert "parity against m.onnx (fp32, ONNX Runtime)" in data["notes"]
    again = cli("export", tmp_path / "m.onnx", "--to", "onnx")
    assert again.exit_code == 2 and "already an exported model" in again.stderr


def test_a_plugin_that_raises_is_unavailable_or_one_line(plugin, cli):
    """A third-party availability() or open() that raises must not take a command down."""
    rows = {r["name"]: r for r in json.loads(cli("backends", "--json").stdout)["backends"]}
    assert not rows["raising"]["available"]
    assert rows["raising"]["reason"] == ("availability() failed in constplug:RaisingBackend: "
                                         "boom in availability")
    (plugin / "m.rz").write_text("x")
    out = cli("eval", plugin / "m.rz", "--data", "digits", "--limit", "2")
    assert out.exit_code == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {plugin / 'm.rz'}: backend 'raising' is not available: availability() "
        "failed in constplug:RaisingBackend: boom in availability")
    (plugin / "m.bo").write_text("x")
    out = cli("eval", plugin / "m.bo", "--data", "digits", "--limit", "2")
    assert out.exit_code == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: backend 'badopen' (constplug:BadOpenBackend) failed to open {plugin / 'm.bo'}: "
        "boom in open")


def test_a_plugin_instance_is_guarded_once():
    """A plugin may register an instance, which every get_backend returns again: its guard must
    not wrap the wrappers (1,200 opens would exceed the recursion limit)."""
    from inceptionctl.backend import Availability, Backend, _guard

    class Raising(Backend):
        name = "raising"

        def availability(self):
            raise RuntimeError("boom")

        def open(self, path, device="cpu", **options):
            raise RuntimeError("never opened")

    b = Raising()
    _guard(b, "x:Raising")
    first = b.availability
    for _ in range(1200):
        _guard(b, "x:Raising")
    assert b.availability is first
    assert b.availability() == Availability(False, "availability() failed in x:Raising: boom")
