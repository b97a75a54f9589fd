"""The TensorRT backend: what runs everywhere (pure parts, registry, unavailable messages) and,
marked ``gpu``, engines built and checked against PyTorch where CUDA and tensorrt are present."""

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from inceptionctl.runtime import cuda_index

import inceptionctl.backends.tensorrt as trtb
from inceptionctl.backend import BackendUnavailable, backend_for, get_backend, open_artifact
from inceptionctl.errors import InceptionError

from .conftest import TINY_TRAIN

# Feature sets of the TensorRT generations plan_build must handle.
TRT86 = {"FP16", "INT8", "TF32", "CALIBRATOR"}
TRT10 = {"STRONGLY_TYPED", "FP16", "INT8", "TF32", "CALIBRATOR"}
TRT11 = {"STRONGLY_TYPED"}


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text


# ------------------------------------------------------------------------- batch profile

@pytest.mark.parametrize("value, expected", [
    ("1:8:32", (1, 8, 32)), (" 2:4:4 ", (2, 4, 4)), ("4", (4, 4, 4)), (5, (5, 5, 5)),
    ((1, 2, 3), (1, 2, 3)), ([8, 8, 8], (8, 8, 8)),
])
def test_batch_profile_parses(value, expected):
    assert trtb.parse_batch_profile(value) == expected


@pytest.mark.parametrize("value", [
    "8:1:32", "0:1:2", "1:2", "1:2:3:4", "a:b:c", "", (1, 2), (3, 2, 1), (0, 1, 1),
    (True, 1, 1), (1.0, 2, 3), 1.5, None, 0,
])
def test_batch_profile_rejects(value):
    with pytest.raises(InceptionError, match="batch range") as exc:
        trtb.parse_batch_profile(value)
    assert one_line(str(exc.value))


# -------------------------------------------------------------------------------- sidecar

SIDE = {"engine": "m.engine", "precision": "fp16", "batch": [1, 8, 32],
        "input": {"name": "images", "shape": [-1, 3, 16, 16]}, "output": {"name": "logits"},
        "tensorrt_version": "10.3.0", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
        "classes": ["a", "b"], "recipe": {"name": "tiny"}, "preprocessing": {"input_size": 16},
        "metadata": {"inceptionctl.precision": "fp32"}}


def test_sidecar_sits_next_to_the_engine():
    assert trtb.sidecar_path("/x/model.engine") == Path("/x/model.engine.json")
    assert trtb.sidecar_path(Path("m.plan")).name == "m.plan.json"


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "m.engine"
    path = trtb.write_sidecar(engine, SIDE)
    assert path == tmp_path / "m.engine.json"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
    back = trtb.read_sidecar(engine)
    assert back["format"] == trtb.SIDECAR_FORMAT and back["format_version"] == 1
    assert {k: back[k] for k in SIDE} == SIDE


def test_missing_sidecar_is_named(tmp_path):
    with pytest.raises(InceptionError, match="m.engine.json: missing") as exc:
        trtb.read_sidecar(tmp_path / "m.engine")
    assert one_line(str(exc.value)) and "rebuild" in str(exc.value)


@pytest.mark.parametrize("text, why", [
    ('{"format": "inceptionctl.tensorrt-engine", "batch": [1, 8', "corrupt"),
    ("\x00\x01 not json", "corrupt"),
    ("[1, 2, 3]", "not an inceptionctl TensorRT sidecar"),
    ('{"format": "something-else"}', "not an inceptionctl TensorRT sidecar"),
])
def test_corrupt_sidecar_is_named(tmp_path, text, why):
    (tmp_path / "m.engine.json").write_text(text)
    with pytest.raises(InceptionError, match=why) as exc:
        trtb.read_sidecar(tmp_path / "m.engine")
    assert str(tmp_path / "m.engine.json") in str(exc.value) and one_line(str(exc.value))


@pytest.mark.parametrize("change, why", [
    ({"tensorrt_version": None}, "'tensorrt_version' missing"),
    ({"batch": [8, 1, 32]}, "batch range"),
    ({"batch": "1:8:32"}, "'batch' missing or not a list"),
    ({"input": {"shape": [1]}}, "input/output name missing"),
    ({"format_version": 99}, "newer than this inceptionctl"),
])
def test_inconsistent_sidecar_is_refused(tmp_path, change, why):
    trtb.write_sidecar(tmp_path / "m.engine", {**SIDE, **change})
    with pytest.raises(InceptionError, match=why) as exc:
        trtb.read_sidecar(tmp_path / "m.engine")
    assert "m.engine.json" in str(exc.value) and one_line(str(exc.value))


# ------------------------------------------------------------------------------ versions

@pytest.mark.parametrize("text, expected", [
    ("10.3.0.26", (10, 3, 0, 26)), ("8.6.1", (8, 6, 1)), ("10.0.0b6", (10, 0, 0)),
    ("10.1.0+cuda12", (10, 1, 0)), ("11", (11,)),
])
def test_parse_version(text, expected):
    assert trtb.parse_version(text) == expected


def test_unreadable_version():
    with pytest.raises(InceptionError, match="unreadable"):
        trtb.parse_version("abc")


@pytest.mark.parametrize("built, installed", [
    ("10.3.0", "10.3.0"), ("10.3.0.26", "10.3.0.30"), ("10.3", "10.3.0"), ("8.6.1.6", "8.6.1"),
])
def test_same_release_loads(built, installed):
    trtb.check_trt_version(built, installed)


@pytest.mark.parametrize("built, installed", [
    ("10.3.0", "10.3.1"),   # TensorRT refuses plans across patch releases too
    ("10.3.0", "10.4.0"), ("8.6.1", "10.3.0"), ("10.3.0.26", "11.0.0"),
])
def test_other_release_is_refused(built, installed):
    with pytest.raises(InceptionError) as exc:
        trtb.check_trt_version(built, installed, "m.engine")
    msg = str(exc.value)
    assert msg.startswith("m.engine: built with TensorRT " + built) and installed in msg
    assert "rebuild" in msg and one_line(msg)


def test_gpu_architecture_check():
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    trtb.check_gpu(h100, {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"})
    trtb.check_gpu({}, h100)  # an old sidecar without GPU facts: TensorRT has the last word
    with pytest.raises(InceptionError, match=r"compute capability 9.0\) but this is .*A10G "
                                             r"\(compute capability 8.6\)"):
        trtb.check_gpu(h100, {"name": "NVIDIA A10G", "compute_capability": "8.6"}, "m.engine")


# -------------------------------------------------------------------------- availability

def test_assess_reasons():
    missing = trtb.assess(None, 4)
    assert not missing.available
    assert missing.reason == "tensorrt not installed: pip install 'inceptionctl[tensorrt]'"
    broken = trtb.assess(None, 1, import_error="OSError: libnvinfer.so.10: cannot open")
    assert not broken.available and "failed to import (OSError: libnvinfer.so.10" in broken.reason
    old = trtb.assess("8.5.3.1", 1)
    assert not old.available and "8.5.3.1 is too old (need >= 8.6" in old.reason
    assert old.version == "8.5.3.1"
    no_gpu = trtb.assess("10.3.0", 0)
    assert (no_gpu.available, no_gpu.reason, no_gpu.version) == (False, "no CUDA device", "10.3.0")
    ok = trtb.assess("10.3.0", 2)
    assert ok.available and ok.devices == ("cuda:0", "cuda:1") and ok.version == "10.3.0"


@pytest.fixture
def no_tensorrt(monkeypatch):
    """tensorrt cannot be imported, whatever is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


class _Severity:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


class _ILogger:
    Severity = _Severity

    def __init__(self):
        pass


def _fake_module(version: str, builder_fails: str | None = None) -> types.ModuleType:
    """A stand-in tensorrt: version, ILogger, and a Builder/Runtime that may fail as the real
    bindings do (a TypeError about a nullptr, the reason logged first)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.ILogger = _ILogger

    def make(kind):
        def factory(logger):
            if builder_fails:
                logger.log(_Severity.ERROR, builder_fails)
                raise TypeError(f"pybind11::init(): factory function returned nullptr ({kind})")
            return types.SimpleNamespace(kind=kind, logger=logger)
        return factory
    module.Builder, module.Runtime = make("Builder"), make("Runtime")
    return module


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A stand-in tensorrt module: its version, its logger base and Builder/Runtime."""
    def install(version: str = "10.3.0", cuda_devices: int = 0, builder_fails: str | None = None):
        module = _fake_module(version, builder_fails)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
        return module
    return install


def test_unavailable_without_tensorrt(no_tensorrt):
    av = get_backend("tensorrt").availability()
    assert not av.available
    assert av.reason == "tensorrt not installed: pip install 'inceptionctl[tensorrt]'"


def test_unavailable_without_cuda(fake_tensorrt):
    fake_tensorrt("10.3.0", cuda_devices=0)
    av = get_backend("tensorrt").availability()
    assert (av.available, av.reason, av.version) == (False, "no CUDA device", "10.3.0")


def test_unavailable_when_tensorrt_is_too_old(fake_tensorrt):
    fake_tensorrt("8.4.3", cuda_devices=1)
    av = get_backend("tensorrt").availability()
    assert not av.available and "too old" in av.reason


def test_unavailable_when_tensorrt_is_broken(monkeypatch):
    def broken():
        raise OSError("libnvinfer.so.10: cannot open shared object file\n(no such file)")
    monkeypatch.setattr(trtb, "_import_trt", broken)
    av = get_backend("tensorrt").availability()
    assert not av.available and "failed to import (OSError: libnvinfer.so.10" in av.reason
    assert one_line(av.reason)


def test_available_with_tensorrt_and_cuda(fake_tensorrt):
    fake_tensorrt("10.3.0.26", cuda_devices=2)
    av = get_backend("tensorrt").availability()
    assert av.available and av.devices == ("cuda:0", "cuda:1") and av.version == "10.3.0.26"


def test_unavailable_when_no_builder_can_be_made(fake_tensorrt):
    fake_tensorrt("10.3.0", cuda_devices=1,
                  builder_fails="CUDA initialization failure with error: 35")
    av = get_backend("tensorrt").availability()
    assert not av.available and av.version == "10.3.0"
    assert "could not create its Builder (CUDA initialization failure with error: 35)" in \
        av.reason
    assert one_line(av.reason)


# ------------------------------------------------------------------ logger and creation

def test_one_logger_per_process_cleared_per_call():
    trt = _fake_module("10.3.0")
    logger = trtb.get_trt_logger(trt)
    assert trtb.get_trt_logger(trt) is logger  # TensorRT keeps one global logger
    seen = []
    logger.begin(seen.append)
    logger.log(_Severity.WARNING, "CUDA lazy loading is not enabled.\nSee docs")
    logger.log(_Severity.ERROR, "first engine: bad")
    logger.log(_Severity.INFO, "chatter")
    assert seen == ["tensorrt: warning: CUDA lazy loading is not enabled. See docs"]
    assert logger.said() == "first engine: bad"
    logger.begin(seen.append, verbose=True)  # the next call starts clean
    assert logger.said() == "" and logger.errors == [] and logger.warnings == []
    logger.log(_Severity.WARNING, "only a warning")
    logger.log(_Severity.VERBOSE, "tactic 7")
    assert logger.said() == "only a warning" and seen[-1] == "tensorrt: tactic 7"


def test_creation_failure_is_one_line_with_tensorrt_reason():
    trt = _fake_module("10.3.0", builder_fails="CUDA initialization failure with error: 35")
    logger = trtb.get_trt_logger(trt).begin()
    for what in ("Builder", "Runtime"):
        with pytest.raises(InceptionError, match=f"m.onnx: TensorRT could not create its {what} "
                                                 r"\(CUDA initialization failure") as exc:
            trtb.create(trt, what, logger.begin(), "m.onnx")
        assert one_line(str(exc.value)) and "nullptr" not in str(exc.value)
    silent = _fake_module("10.3.0")
    silent.Runtime = lambda _logger: None
    with pytest.raises(InceptionError, match="could not create its Runtime \\(no reason given"):
        trtb.create(silent, "Runtime", trtb.get_trt_logger(silent).begin(), "e.engine")


# ------------------------------------------------------------------------ timing cache

class _Config:
    """A builder config's timing-cache calls, as the bindings behave: None for bytes that are
    not a cache, False from set_timing_cache for a cache of another TensorRT/GPU."""

    def __init__(self, accept=b"CACHE", serialize=b"NEW"):
        self.accept, self.serialized, self.set = accept, serialize, []

    def create_timing_cache(self, data):
        if data and not data.startswith(b"CACHE") and not data.startswith(b"FOREIGN"):
            return None
        return types.SimpleNamespace(data=data)

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        ok = not cache.data.startswith(b"FOREIGN")
        if ok:
            self.set.append(cache.data)
        return ok

    def get_timing_cache(self):
        value = self.serialized

        class Cache:
            def serialize(self):
                if isinstance(value, Exception):
                    raise value
                return value
        return Cache()


def _job(cache: Path, log) -> "trtb._Build":
    return trtb._Build(None, Path("m.onnx"), "fp32", (1, 8, 32), None, 0, 1.0, cache, [], log)


@pytest.mark.parametrize("content, used, note", [
    (None, [b""], None), (b"CACHE-1", [b"CACHE-1"], None),
    (b"\x00garbage", [b""], "corrupt or foreign"), (b"FOREIGN", [b""], "corrupt or foreign"),
])
def test_timing_cache_is_read_or_replaced_with_a_note(tmp_path, content, used, note):
    path = tmp_path / "t.cache"
    if content is not None:
        path.write_bytes(content)
    logs, config = [], _Config()
    trtb._load_timing_cache(_job(path, logs.append), config)
    assert config.set == used
    assert (note in logs[0]) if note else logs == []


def test_timing_cache_is_saved_under_a_lock_and_a_failure_keeps_the_engine(tmp_path):
    path = tmp_path / "t.cache"
    logs = []
    trtb._save_timing_cache(_job(path, logs.append), _Config(serialize=b"CACHE-2"))
    assert path.read_bytes() == b"CACHE-2" and logs == []
    assert (tmp_path / "t.cache.lock").exists()
    trtb._save_timing_cache(_job(path, logs.append),
                            _Config(serialize=RuntimeError("serialize failed")))
    assert path.read_bytes() == b"CACHE-2"  # the old cache stays whole
    assert logs == [f"warning: {path}: timing cache not saved (serialize failed)"]


def test_cache_lock_is_exclusive(tmp_path):
    import fcntl

    path = tmp_path / "t.cache"
    with trtb.cache_lock(path):
        with open(tmp_path / "t.cache.lock", "a") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / "t.cache.lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


def test_layer_precisions_from_the_inspector():
    info = {"Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Outputs": [{"Name": "x", "Format/Datatype": "Channel major FP16 format where ..."}]},
        {"Name": "lrn1", "LayerType": "LRN", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "q", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Int8 NC32HW32"}]},
        "fc (built without DETAILED)"]}
    assert trtb.layer_precisions(json.dumps(info)) == [
        {"name": "conv1", "type": "CaskConvolution", "precision": "fp16"},
        {"name": "lrn1", "type": "LRN", "precision": "fp32"},
        {"name": "q", "type": "Reformat", "precision": "int8"},
        {"name": "fc (built without DETAILED)", "type": "", "precision": ""}]


def test_importing_the_plugin_does_not_import_tensorrt():
    code = ("import sys, inceptionctl.backends.tensorrt as m\n"
            "from inceptionctl.backend import backend_names, get_backend\n"
            "b = get_backend('tensorrt'); assert 'tensorrt' in backend_names()\n"
            "print(b.name, b.suffixes, 'tensorrt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == "tensorrt ('.engine', '.plan') False"


def test_registry_lists_the_backend():
    backend = get_backend("tensorrt")
    assert isinstance(backend, trtb.TensorRTBackend)
    assert (backend.name, backend.package) == ("tensorrt", "tensorrt")
    assert "NVIDIA GPU" in backend.install_hint
    assert backend_for(Path("model.engine")).name == "tensorrt"
    assert backend_for(Path("model.PLAN")).name == "tensorrt"


def test_open_artifact_on_an_engine_here_says_unavailable(tmp_path, no_tensorrt):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(BackendUnavailable) as exc:
        open_artifact(engine)
    msg = str(exc.value)
    assert msg == (f"{engine}: backend 'tensorrt' is not available: tensorrt not installed: "
                   "pip install 'inceptionctl[tensorrt]'")  # the file that needs it, named


def test_open_artifact_without_cuda_says_so(tmp_path, fake_tensorrt):
    fake_tensorrt("10.3.0", cuda_devices=0)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BackendUnavailable, match="not available: no CUDA device "
                                                 r"\(pip install .*needs an NVIDIA GPU") as exc:
        open_artifact(engine, device="cuda")
    assert one_line(str(exc.value))


def test_open_checks_the_tensorrt_version_first(tmp_path, fake_tensorrt):
    fake_tensorrt("10.4.0", cuda_devices=1)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    trtb.write_sidecar(engine, SIDE)  # built by 10.3.0
    with pytest.raises(InceptionError, match=r"m.engine: built with TensorRT 10.3.0 but TensorRT "
                                             r"10.4.0 is installed.*rebuild"):
        get_backend("tensorrt").open(engine, device="cuda:0")


def test_open_without_sidecar_names_it(tmp_path, fake_tensorrt):
    fake_tensorrt("10.3.0", cuda_devices=1)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(InceptionError, match=r"m.engine.json: missing"):
        get_backend("tensorrt").open(engine)


def test_devices():
    # A TensorRT engine only runs on CUDA: the generic default device 'cpu' means the first GPU.
    assert [cuda_index(d, "TensorRT") for d in ("cpu", "auto", "cuda", "cuda:0", "cuda:3", None)] == \
        [0, 0, 0, 0, 3, 0]
    with pytest.raises(InceptionError, match="--device mps: TensorRT runs on CUDA"):
        cuda_index("mps", "TensorRT")


# ------------------------------------------------------------------------- build planning

def test_plan_fp32_is_plain_float_without_tf32():
    plan = trtb.plan_build("fp32", has_qdq=False, has_fp16=False, calibration=False,
                           features=TRT10)
    assert plan == trtb.BuildPlan(False, (), ("TF32",), "none", False)
    allowed = trtb.plan_build("fp32", has_qdq=False, has_fp16=False, calibration=False,
                              features=TRT10, tf32=True)
    assert allowed.clear_flags == ()  # --tf32: the builder may use it


def test_plan_fp16_from_a_float_onnx_uses_the_flag_where_it_exists():
    plan = trtb.plan_build("fp16", has_qdq=False, has_fp16=False, calibration=False,
                           features=TRT10)
    assert (plan.strongly_typed, plan.set_flags) == (False, ("FP16",))
    with pytest.raises(InceptionError, match="no FP16 builder flag; build fp32 or int8 here, or "
                                             "build from an fp16 ONNX "
                                             r"\(`inceptionctl export RUN --to onnx "
                                             "--precision fp16`") as exc:
        trtb.plan_build("fp16", has_qdq=False, has_fp16=False, calibration=False, features=TRT11)
    assert one_line(str(exc.value))


def test_plan_fp16_onnx_is_built_strongly_typed():
    for feats in (TRT10, TRT11):
        plan = trtb.plan_build("fp16", has_qdq=False, has_fp16=True, calibration=False,
                               features=feats)
        assert (plan.strongly_typed, plan.set_flags) == (True, ())
    old = trtb.plan_build("fp16", has_qdq=False, has_fp16=True, calibration=False, features=TRT86)
    assert (old.strongly_typed, old.set_flags) == (False, ("FP16",))


def test_plan_int8_qdq_is_explicit_and_strongly_typed():
    for feats in (TRT10, TRT11):
        plan = trtb.plan_build("int8", has_qdq=True, has_fp16=False, calibration=True,
                               features=feats)
        assert plan == trtb.BuildPlan(True, (), (), "explicit-qdq", False)
    old = trtb.plan_build("int8", has_qdq=True, has_fp16=False, calibration=False, features=TRT86)
    assert (old.strongly_typed, old.set_flags, old.quantization) == \
        (False, ("INT8",), "explicit-qdq")


def test_plan_int8_from_a_float_onnx_calibrates():
    plan = trtb.plan_build("int8", has_qdq=False, has_fp16=False, calibration=True,
                           features=TRT10)
    assert (plan.set_flags, plan.quantization, plan.calibrate) == \
        (("INT8",), "implicit-calibration", True)
    with pytest.raises(InceptionError, match="needs calibration data"):
        trtb.plan_build("int8", has_qdq=False, has_fp16=False, calibration=False, features=TRT10)
    with pytest.raises(InceptionError, match="no implicit INT8 calibration; build from the run"
                                             ".*--int8-flavour tensorrt"):
        trtb.plan_build("int8", has_qdq=False, has_fp16=False, calibration=True, features=TRT11)


@pytest.mark.parametrize("precision, qdq, fp16, why", [
    ("fp16", True, False, "INT8 \\(Q/DQ\\) model; build it with --precision int8"),
    ("fp32", True, False, "--precision int8"),
    ("fp32", False, True, "carries fp16 tensors"),
    ("int8", False, True, "carries fp16 tensors"),
    ("bf16", False, False, "expected one of fp32, fp16, int8"),
])
def test_plan_refuses_contradictions(precision, qdq, fp16, why):
    with pytest.raises(InceptionError, match=why):
        trtb.plan_build(precision, has_qdq=qdq, has_fp16=fp16, calibration=True, features=TRT10)


def test_features_are_probed_not_assumed():
    def fake(flags, creation, calibrator=True):
        mod = types.SimpleNamespace(
            BuilderFlag=types.SimpleNamespace(**{f: object() for f in flags}),
            NetworkDefinitionCreationFlag=types.SimpleNamespace(**{f: 0 for f in creation}))
        if calibrator:
            mod.IInt8EntropyCalibrator2 = object
        return mod
    assert trtb.trt_features(fake(["FP16", "INT8", "TF32"], ["EXPLICIT_BATCH", "STRONGLY_TYPED"])) \
        == TRT10
    assert trtb.trt_features(fake([], ["STRONGLY_TYPED"], calibrator=False)) == TRT11
    assert trtb.trt_features(fake(["FP16", "INT8", "TF32"], ["EXPLICIT_BATCH"])) == TRT86


# ------------------------------------------------------------------------ small pure parts

@pytest.mark.parametrize("name, dtype", [
    ("FLOAT", torch.float32), ("HALF", torch.float16), ("INT8", torch.int8),
    ("INT32", torch.int32), ("INT64", torch.int64), ("BOOL", torch.bool), ("BF16", torch.bfloat16),
    ("DataType.HALF", torch.float16), (types.SimpleNamespace(name="FLOAT"), torch.float32),
])
def test_dtype_mapping(name, dtype):
    assert trtb.torch_dtype(name) is dtype


def test_unknown_dtype():
    with pytest.raises(InceptionError, match="FP4 has no torch equivalent"):
        trtb.torch_dtype("FP4")


def test_one_line():
    assert trtb.one_line(["a\n  b", "", "c"]) == "a b; c"
    assert trtb.one_line([str(i) for i in range(8)], limit=3) == "0; 1; 2; ... and 5 more"


def test_parser_errors_fit_on_one_line():
    def err(node, name, op, code, desc):
        return types.SimpleNamespace(node=lambda: node, node_name=lambda: name,
                                     node_operator=lambda: op, desc=lambda: desc,
                                     code=lambda: types.SimpleNamespace(name=code))
    errors = [err(12, "/stem/conv1/Conv", "Conv", "UNSUPPORTED_NODE", "no\nimporter"),
              err(-1, "", "", "INVALID_GRAPH", "bad graph")]
    assert trtb.one_line(trtb._parser_error(e) for e in errors) == (
        "node 12 (/stem/conv1/Conv, Conv): UNSUPPORTED_NODE: no importer; "
        "INVALID_GRAPH: bad graph")


def test_calibration_chunks():
    batches = [torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4, dtype=torch.float64),
               torch.randn(3, 3, 4, 4)]
    chunks = trtb.calibration_chunks(batches, 4, (3, 4, 4))
    assert [c.shape[0] for c in chunks] == [4, 4, 4]  # 13 samples: the short tail is dropped
    assert all(c.dtype == torch.float32 and c.is_contiguous() for c in chunks)
    assert torch.equal(chunks[0], batches[0][:4])
    assert [c.shape[0] for c in trtb.calibration_chunks(batches, 64, (3, 4, 4))] == [13]
    with pytest.raises(InceptionError, match=r"calibration batch 1: expected \[N, 3, 4, 4\], "
                                             r"got \[2, 1, 4, 4\]"):
        trtb.calibration_chunks([batches[0], torch.randn(2, 1, 4, 4)], 4, (3, 4, 4))
    with pytest.raises(InceptionError, match="no samples"):
        trtb.calibration_chunks([torch.randn(0, 3, 4, 4)], 4, (3, 4, 4))


META = {
    "inceptionctl.recipe": json.dumps({"name": "tiny", "model": {"num_classes": 2}}),
    "inceptionctl.classes": json.dumps(["cat", "dog"]),
    "inceptionctl.preprocessing": json.dumps({"input_size": 16, "mean": [0.5] * 3,
                                              "std": [0.5] * 3, "eval_size": 16,
                                              "eval_scales": [18, 20]}),
    "inceptionctl.precision": "int8",
    "inceptionctl.batch": "1:8:32",
    "inceptionctl.version": "0.1.0",
    "inceptionctl.source": json.dumps({"file": "best.pt", "kind": "checkpoint"}),
    "inceptionctl.int8": json.dumps({"flavour": "tensorrt", "calibration_samples": 64}),
    "producer.note": "kept verbatim",
}


def test_onnx_metadata_is_read_by_the_one_reader():
    """The builder reads an ONNX's facts through inceptionctl.artifact, nothing of its own."""
    from inceptionctl.artifact import read_metadata

    got = read_metadata(META, "m.onnx")
    assert got == {"recipe": {"name": "tiny", "model": {"num_classes": 2}},
                   "classes": ["cat", "dog"],
                   "preprocessing": json.loads(META["inceptionctl.preprocessing"]),
                   "precision": "int8", "batch": (1, 8, 32), "version": "0.1.0",
                   "source": {"file": "best.pt", "kind": "checkpoint"},
                   "int8": {"flavour": "tensorrt", "calibration_samples": 64}}
    assert not hasattr(trtb, "parse_onnx_metadata") and not hasattr(trtb, "METADATA_KEYS")


def test_onnx_metadata_as_the_exporter_writes_it(trained):
    """The exporter's keys and encodings are read back whole."""
    from inceptionctl.artifact import class_names, metadata_props, preprocessing, read_metadata

    recipe = trained[0]
    props = metadata_props(recipe, class_names(recipe), preprocessing(recipe), "fp32",
                           (1, 8, 32), {"file": "best.pt"})
    got = read_metadata(props, "m.onnx")
    assert got["recipe"] == recipe.to_dict()
    assert got["classes"] == class_names(recipe) and got["preprocessing"] == preprocessing(recipe)
    assert (got["precision"], got["batch"], got["source"]) == ("fp32", (1, 8, 32),
                                                               {"file": "best.pt"})


def test_onnx_metadata_that_is_not_ours_is_refused_in_one_line(tmp_path, onnx_files):
    """No second, tolerant reader: an ONNX without our facts (or with broken ones) is refused
    before TensorRT is asked for anything."""
    from inceptionctl.artifact import read_metadata

    recipe_yaml = read_metadata({**META, "inceptionctl.recipe": "name: tiny\nmodel: {}\n"}, "m")
    assert recipe_yaml["recipe"] == {"name": "tiny", "model": {}}  # YAML spellings still read
    for bad, why in [({"recipe": "name: tiny", "classes": "[0, 1, 2]"}, "not an inceptionctl model"),
                     ({**META, "inceptionctl.classes": "{oops"}, "classes is not valid JSON"),
                     ({**META, "inceptionctl.batch": "9:1:2"}, "inceptionctl.batch"),
                     ({**META, "inceptionctl.preprocessing": "[1, 2]"}, "should be a JSON object")]:
        with pytest.raises(InceptionError, match=why) as exc:
            read_metadata(bad, "m.onnx")
        assert one_line(str(exc.value))
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(onnx_files["fp32"]))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    with pytest.raises(InceptionError, match="not an inceptionctl model"):
        trtb._read_onnx(foreign)


# ------------------------------------------------------------- a small model and its ONNX

NOISE = 0.1  # of a sample around its class template (templates are N(0, 1) images)


def _samples(n: int, seed: int, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs with a class each: a class template under noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, templates.shape[0], (n,), generator=g)
    return templates[y] + NOISE * torch.randn(n, *templates.shape[1:], generator=g), y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GoogLeNet (our model code) with lively weights, no training: (recipe, model,
    templates). The classifier's rows are rescaled and re-centred over random inputs, so every
    class wins on some; each class's template is the random input it takes with the widest
    top-1 margin, so samples around the templates have clear margins (checked below)."""
    from inceptionctl import build_model, load_recipe

    from .conftest import lively

    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_TRAIN.lstrip("\n"))
    recipe = load_recipe(path)
    torch.manual_seed(0)
    model = lively(build_model(recipe)).eval()
    size, classes = recipe.data.input_size, recipe.model.num_classes
    candidates = torch.randn(4000, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        spread = model(candidates).std(0)  # a lively net's logits barely depend on the input
        model.fc.weight.div_(spread[:, None])
        model.fc.bias.div_(spread)
        model.fc.bias.sub_(model(candidates).mean(0))
        logits = model(candidates)
    top2 = logits.topk(2, dim=1).values
    margin, pred = top2[:, 0] - top2[:, 1], logits.argmax(1)
    assert set(pred.tolist()) == set(range(classes))
    templates = torch.stack([candidates[torch.where(pred == c, margin, -1.0).argmax()]
                             for c in range(classes)])
    return recipe, model, templates


def _metadata(recipe, precision: str = "fp32", batch: str = "1:8:32") -> dict[str, str]:
    from inceptionctl.checkpoint import class_names, preprocessing

    return {"inceptionctl.recipe": recipe.to_yaml(),
            "inceptionctl.classes": json.dumps(class_names(recipe)),
            "inceptionctl.preprocessing": json.dumps(preprocessing(recipe)),
            "inceptionctl.precision": precision, "inceptionctl.batch": batch,
            "inceptionctl.version": "0.1.0"}


def _set_metadata(path: Path, props: dict[str, str]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_onnx(model, recipe, path: Path) -> Path:
    """fp32 ONNX as our exporter makes it: input images, output logits, dynamic batch, metadata."""
    size = recipe.data.input_size
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.randn(2, 3, size, size), str(path),
                          input_names=["images"], output_names=["logits"], opset_version=17,
                          dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    _set_metadata(path, _metadata(recipe))
    return path


def quantize_qdq(src: Path, dst: Path, recipe, calib: torch.Tensor, symmetric: bool = True,
                 quantize_bias: bool | None = None) -> Path:
    """INT8 QDQ ONNX: symmetric s8/s8 (the TensorRT flavour) or u8 activations (the CPU one)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": b.numpy()} for b in calib.split(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    # 7-bit weights, as the product's flavours (a CPU without VNNI saturates)
                    reduce_range=True,
                    # TensorRT's DequantizeLinear takes no int32: biases stay float.
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": not symmetric if quantize_bias is None
                                   else quantize_bias})
    _set_metadata(dst, _metadata(recipe, precision="int8"))
    return dst


@pytest.fixture(scope="module")
def onnx_files(trained, tmp_path_factory):
    recipe, model, templates = trained
    d = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, recipe, d / "tiny.onnx")
    calib, _ = _samples(64, 5, templates)
    qdq = quantize_qdq(fp32, d / "tiny.int8.onnx", recipe, calib)
    return {"fp32": fp32, "qdq": qdq, "calib": calib, "dir": d}


def test_the_test_model_separates_its_classes(trained):
    recipe, model, templates = trained
    x, y = _samples(256, 99, templates)
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(1) == y).float().mean() > 0.98
    # Clear top-1 margins, so the 99% agreement bar measures the engine rather than near-ties.
    top2 = logits.topk(2, dim=1).values
    span = logits.max() - logits.min()
    assert ((top2[:, 0] - top2[:, 1]) > 0.05 * span).float().mean() >= 0.99


def test_onnx_facts_of_a_float_export(onnx_files, trained):
    from inceptionctl.checkpoint import class_names

    facts = trtb.onnx_facts(onnx.load(str(onnx_files["fp32"])))
    assert facts["inputs"] == [("images", [-1, 3, 16, 16])]
    assert (facts["has_qdq"], facts["has_fp16"], facts["qdq_problem"]) == (False, False, None)
    from inceptionctl.artifact import read_metadata

    meta = read_metadata(facts["metadata"], onnx_files["fp32"])
    assert meta["recipe"]["name"] == "tiny"
    assert meta["classes"] == class_names(trained[0])
    assert meta["preprocessing"]["input_size"] == 16 and meta["batch"] == (1, 8, 32)


def test_the_int8_test_model_is_accurate_before_tensorrt(onnx_files, trained):
    """The QDQ model agrees with PyTorch under ONNX Runtime: the GPU tests' 99% bar is reachable."""
    import onnxruntime as ort

    _, model, templates = trained
    x, _ = _samples(64, 21, templates)
    sess = ort.InferenceSession(str(onnx_files["qdq"]), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    assert (got.argmax(1) == _reference(model, x).argmax(1)).float().mean() >= 0.99


def test_onnx_facts_of_the_tensorrt_int8_flavour(onnx_files):
    facts = trtb.onnx_facts(onnx.load(str(onnx_files["qdq"])))
    assert facts["has_qdq"] and not facts["has_fp16"] and facts["qdq_problem"] is None


def test_onnx_facts_flag_the_cpu_int8_flavour(onnx_files, trained):
    recipe, _, _ = trained
    u8 = quantize_qdq(onnx_files["fp32"], onnx_files["dir"] / "tiny.u8.onnx", recipe,
                      onnx_files["calib"], symmetric=False)
    facts = trtb.onnx_facts(onnx.load(str(u8)))
    assert facts["has_qdq"] and "unsigned 8-bit" in facts["qdq_problem"]


def test_onnx_facts_refuse_an_int32_dequantize(onnx_files, trained):
    """onnxruntime's default QuantizeBias=True writes int32 biases behind DequantizeLinear,
    which TensorRT's parser rejects: refused here in one line, before TensorRT sees it."""
    recipe, _, _ = trained
    i32 = quantize_qdq(onnx_files["fp32"], onnx_files["dir"] / "tiny.i32.onnx", recipe,
                       onnx_files["calib"], symmetric=True, quantize_bias=True)
    problem = trtb.onnx_facts(onnx.load(str(i32)))["qdq_problem"]
    assert problem and "dequantizes int32" in problem and "QuantizeBias" in problem
    assert one_line(problem)
    with pytest.raises(InceptionError, match="dequantizes int32.*--int8-flavour tensorrt"):
        trtb._read_onnx(i32)


def test_onnx_facts_see_fp16():
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Cast", ["images"], ["half"], to=onnx.TensorProto.FLOAT16),
         h.make_node("Cast", ["half"], ["logits"], to=onnx.TensorProto.FLOAT)], "g",
        [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])])
    facts = trtb.onnx_facts(h.make_model(graph))
    assert facts["has_fp16"] and not facts["has_qdq"]
    assert facts["inputs"] == [("images", [-1, 3, 8, 8])]


@pytest.mark.parametrize("kwargs, why", [
    ({"precision": "bf16"}, "precision 'bf16'"),
    ({"batch": "8:1:2"}, "batch range"),
    ({"out": "tiny.trt"}, "must end in .engine or .plan"),
    ({"onnx_path": "missing.onnx"}, "missing.onnx: no such file"),
    ({"workspace_gib": 0}, "workspace"),
])
def test_build_refuses_bad_arguments_before_anything_else(tmp_path, onnx_files, kwargs, why):
    args = {"onnx_path": onnx_files["fp32"], "out": tmp_path / "tiny.engine", "precision": "fp32",
            "batch": "1:8:32", **kwargs}
    for key in ("out", "onnx_path"):
        if isinstance(args[key], str):
            args[key] = tmp_path / args[key]
    with pytest.raises(InceptionError, match=why):
        trtb.build_engine(**args, log=lambda _: None)


def test_build_refuses_an_unwritable_folder(tmp_path, onnx_files, fake_tensorrt,
                                            read_only_folder):
    fake_tensorrt("10.3.0", cuda_devices=1)  # checked before TensorRT is asked for anything
    with pytest.raises(InceptionError, match="locked: the output folder is not writable"):
        trtb.build_engine(onnx_files["fp32"], read_only_folder / "m.engine", "fp32", "1:8:32",
                          log=lambda _: None)
    assert not list(read_only_folder.iterdir())


def test_build_here_says_unavailable(tmp_path, onnx_files, no_tensorrt):
    with pytest.raises(BackendUnavailable, match="tensorrt not installed") as exc:
        trtb.build_engine(onnx_files["fp32"], tmp_path / "tiny.engine", "fp16", (1, 8, 32),
                          log=lambda _: None)
    assert one_line(str(exc.value))
    assert not list(tmp_path.iterdir())  # nothing half-written


# ------------------------------------------------------------------------- on a real GPU

@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return module


def _fp16_onnx(onnx_files) -> Path:
    """The fp16 ONNX (float32 I/O) the exporter writes: TensorRT 11 has no FP16 flag."""
    from inceptionctl.artifact import precision_props, write_float16_copy

    return write_float16_copy(onnx_files["fp32"], onnx_files["dir"] / "tiny.fp16.onnx",
                              precision_props("fp16"))


@pytest.fixture(scope="module")
def engines(trt, onnx_files, tmp_path_factory):
    """Engines built once per module: {name: path}; built lazily so one failure names itself."""
    d = tmp_path_factory.mktemp("engines")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            src, precision, calib = {
                "fp32": (onnx_files["fp32"], "fp32", None),
                "fp16": (_fp16_onnx(onnx_files), "fp16", None),
                "int8-qdq": (onnx_files["qdq"], "int8", None),
                "int8-calib": (onnx_files["fp32"], "int8", list(onnx_files["calib"].split(16))),
            }[name]
            built[name] = trtb.build_engine(src, d / f"{name}.engine", precision, "1:8:32",
                                            calib_batches=calib, log=print, workspace_gib=1.0,
                                            timing_cache=d / "timing.cache")
        return built[name]
    return get


def _reference(model, x):
    with torch.no_grad():
        return model(x)


def _run_all(session, x, step=32):
    return torch.cat([session.run(chunk) for chunk in x.split(step)])


@pytest.mark.gpu
def test_fp32_engine_matches_pytorch(trt, trained, engines):
    recipe, model, templates = trained
    path = engines("fp32")
    side = trtb.read_sidecar(path)
    assert side["tensorrt_version"] == trt.__version__ and side["precision"] == "fp32"
    assert side["batch"] == [1, 8, 32] and side["input"] == {"name": "images",
                                                             "shape": [-1, 3, 16, 16]}
    assert side["gpu"]["name"] == torch.cuda.get_device_name(0)
    assert side["recipe"]["name"] == "tiny" and len(side["classes"]) == 10
    assert side["metadata"]["inceptionctl.batch"] == "1:8:32"
    x, _ = _samples(64, 11, templates)
    with open_artifact(path, device="cuda:0") as session:
        assert session.info.kind == "engine" and session.info.batch_range == (1, 32)
        assert session.info.input_dtype == torch.float32 and session.info.num_classes == 10
        got = _run_all(session, x)
    ref = _reference(model, x)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    span = (ref.max() - ref.min()).item()
    assert (got - ref).abs().max().item() <= 1e-3 * span
    assert torch.equal(got.argmax(1), ref.argmax(1))


@pytest.mark.gpu
def test_engine_runs_across_its_profile_and_refuses_outside(trt, trained, engines):
    recipe, model, templates = trained
    x, _ = _samples(33, 12, templates)
    ref = _reference(model, x)
    with open_artifact(engines("fp32"), device="cuda") as session:
        for n in (1, 8, 32):  # min, opt, max
            got = session.run(x[:n])
            assert got.shape == (n, 10)
            assert (got - ref[:n]).abs().max().item() <= 1e-3 * (ref.max() - ref.min()).item()
        with pytest.raises(InceptionError, match="batch 33 is outside the artifact's range 1..32"):
            session.run(x)
        with pytest.raises(InceptionError, match="input must be 16x16, got 20x20"):
            session.run(torch.randn(2, 3, 20, 20))
        with pytest.raises(InceptionError, match="dtype must be torch.float32"):
            session.run(x[:2].half())
    with pytest.raises(InceptionError, match="closed"):
        session.run(x[:1])


def _agreement(session, model, templates, seed=21):
    x, _ = _samples(64, seed, templates)
    got, ref = _run_all(session, x), _reference(model, x)
    return (got.argmax(1) == ref.argmax(1)).float().mean().item()


@pytest.mark.gpu
def test_fp16_engine_agrees_with_pytorch(trt, trained, engines):
    recipe, model, templates = trained
    path = engines("fp16")
    assert (path.parent / "timing.cache").is_file()
    with open_artifact(path, device="cuda:0") as session:
        assert session.info.precision == "fp16"
        assert _agreement(session, model, templates) >= 0.99


@pytest.mark.gpu
def test_int8_engine_from_qdq_onnx_agrees_with_pytorch(trt, trained, engines):
    recipe, model, templates = trained
    path = engines("int8-qdq")
    assert trtb.read_sidecar(path)["quantization"] == "explicit-qdq"
    with open_artifact(path, device="cuda:0") as session:
        assert _agreement(session, model, templates) >= 0.99


@pytest.mark.gpu
def test_int8_engine_by_calibration_agrees_with_pytorch(trt, trained, engines):
    """Implicit INT8 calibration. TensorRT 8.6 to 10 offer it: not finding it there means our
    probe missed a renamed API, a failure. 11 removed it: there the build refuses in one line."""
    features = trtb.trt_features(trt)
    if "CALIBRATOR" not in features:
        assert trtb.parse_version(trt.__version__)[0] >= 11, (
            f"tensorrt {trt.__version__} has implicit INT8 calibration, but trt_features finds "
            f"only {sorted(features)} (BuilderFlag.INT8 and IInt8EntropyCalibrator2 expected)")
        with pytest.raises(InceptionError, match="no implicit INT8 calibration") as exc:
            engines("int8-calib")
        assert one_line(str(exc.value))
        return
    recipe, model, templates = trained
    path = engines("int8-calib")
    assert trtb.read_sidecar(path)["quantization"] == "implicit-calibration"
    with open_artifact(path, device="cuda:0") as session:
        assert _agreement(session, model, templates) >= 0.99


@pytest.mark.gpu
def test_engine_and_sidecar_must_agree(trt, engines, tmp_path):
    import shutil

    src = engines("fp32")
    copy = tmp_path / "copy.engine"
    shutil.copy(src, copy)
    side = trtb.read_sidecar(src)
    trtb.write_sidecar(copy, {**side, "engine_sha256": "0" * 64})
    with pytest.raises(InceptionError, match="does not match its sidecar"):
        open_artifact(copy, device="cuda:0")
    trtb.write_sidecar(copy, {**side, "tensorrt_version": "9.9.9"})
    with pytest.raises(InceptionError, match="built with TensorRT 9.9.9"):
        open_artifact(copy, device="cuda:0")


def test_sidecar_facts_of_a_build_are_true_and_name_no_temporary_file(tmp_path, onnx_files,
                                                                       fake_tensorrt,
                                                                       monkeypatch):
    """build_engine with TensorRT's own calls stubbed: what the sidecar records around them."""
    trt = fake_tensorrt("10.16.0", cuda_devices=1)
    trt.BuilderFlag = types.SimpleNamespace(FP16=1, INT8=2, TF32=3)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    layers = [{"name": "conv1", "type": "CaskConvolution", "precision": "fp32"}]
    monkeypatch.setattr(trtb, "_build_serialized", lambda job: (b"ENGINE", {
        "input": {"name": "images", "shape": [-1, 3, 16, 16]}, "output": {"name": "logits"}}))
    monkeypatch.setattr(trtb, "_layer_precisions", lambda trt, blob, job: layers)
    monkeypatch.setattr(trtb, "_gpu", lambda i: {"name": "NVIDIA H100", "compute_capability": "9.0"})
    monkeypatch.setattr(trtb, "trt_cuda_major", lambda: "13")
    out = trtb.build_engine(onnx_files["fp32"], tmp_path / "m.engine", "fp32", "1:8:32",
                            log=lambda _: None)
    assert out.read_bytes() == b"ENGINE"
    side = trtb.read_sidecar(out)
    assert side["format_version"] == trtb.SIDECAR_VERSION
    assert (side["tensorrt_version"], side["tensorrt_cuda"]) == ("10.16.0", "13")
    assert side["gpu"] == {"name": "NVIDIA H100", "compute_capability": "9.0"}
    assert side["builder_flags"] == {"set": [], "cleared": ["TF32"], "strongly_typed": False}
    assert side["layer_precisions"] == layers
    src = side["source_onnx"]
    assert src["file"] == onnx_files["fp32"].name and "path" not in src
    assert len(src["sha256"]) == 64
    assert str(onnx_files["dir"]) not in trtb.sidecar_path(out).read_text()
    with_tf32 = trtb.build_engine(onnx_files["fp32"], tmp_path / "t.engine", "fp32", "1:8:32",
                                  log=lambda _: None, tf32=True)
    assert trtb.read_sidecar(with_tf32)["builder_flags"]["cleared"] == []


def test_a_newer_sidecar_format_is_refused(tmp_path):
    engine = tmp_path / "m.engine"
    trtb.write_sidecar(engine, SIDE)
    data = json.loads(trtb.sidecar_path(engine).read_text())
    data["format_version"] = trtb.SIDECAR_VERSION + 1
    trtb.sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(InceptionError, match="sidecar format 2 is newer than this inceptionctl"):
        trtb.read_sidecar(engine)
