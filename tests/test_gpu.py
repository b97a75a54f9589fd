"""The product's own path on a CUDA device (marked ``gpu``; ``make test-gpu`` runs them):
export to TensorRT in each precision from a trained run, eval and compare each engine, CUDA
training under mixed precision, and eval / profile --time on cuda. Skipped where there is no
CUDA device, the TensorRT ones also where tensorrt is not installed (the reason is shown)."""

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _tensorrt():
    pytest.importorskip("tensorrt", reason="tensorrt not installed (pip install "
                                           "'inceptionctl[tensorrt]')")


def _json(result) -> dict:
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def checkpoint_top1(default_run):
    """The default run's eval on cuda: the reference every engine is held to."""
    from typer.testing import CliRunner

    from inceptionctl.cli import app

    run, _, _ = default_run
    result = CliRunner().invoke(app, ["eval", str(run), "--device", "cuda", "--precision",
                                      "fp32", "--json"])
    return _json(result)["top1"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_export_eval_and_compare(default_run, checkpoint_top1, cli, tmp_path,
                                          precision):
    _tensorrt()
    run, _, _ = default_run
    engine = tmp_path / f"best.{precision}.engine"
    cache = tmp_path / "timing.cache"
    report = _json(cli("export", run, "--to", "tensorrt", "--precision", precision,
                       "--calib-data", "digits", "--out", engine, "--timing-cache", cache,
                       "--json"))
    assert report["passed"] and report["format"] == "tensorrt" and cache.is_file()
    side = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert side["precision"] == precision and side["layer_precisions"]
    assert side["gpu"]["name"] == torch.cuda.get_device_name(0)
    if precision == "fp32":
        assert "TF32" in side["builder_flags"]["cleared"] or not side["builder_flags"]["cleared"]
    top1 = _json(cli("eval", engine, "--json"))["top1"]
    assert abs(top1 - checkpoint_top1) <= (0.1 if precision == "fp32" else 1.0)
    compared = cli("compare", run, engine, "--data", "digits", "--samples", "128", "--json")
    assert compared.exit_code in (0, 1), compared.output[-2000:]
    assert json.loads(compared.stdout)["top1_agreement"] >= 99.0


def test_tensorrt_engine_from_an_exported_onnx(default_run, cli, tmp_path):
    """Export once (ONNX), build on the target GPU: `export MODEL.onnx --to tensorrt`."""
    _tensorrt()
    run, _, _ = default_run
    onnx_file = tmp_path / "m.onnx"
    _json(cli("export", run, "--to", "onnx", "--out", onnx_file, "--json"))
    report = _json(cli("export", onnx_file, "--to", "tensorrt", "--precision", "fp16",
                       "--calib-data", "digits", "--json"))
    assert report["passed"] and report["file"].endswith("m.fp16.engine")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_training_with_mixed_precision(cli, tmp_path, tiny_recipe, precision):
    report = _json(cli("train", "--recipe", tiny_recipe, "--device", "cuda", "--precision",
                       precision, "--channels-last", "--out", tmp_path / "run",
                       "--set", "train.epochs=2", "--json"))
    assert report["epochs"] == 2 and report["best_top1"] > 50.0


def test_eval_and_profile_time_on_cuda(default_run, cli):
    run, _, _ = default_run
    assert _json(cli("eval", run, "--device", "cuda", "--json"))["images"] > 0
    result = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "torch",
                 "--device", "cuda", "--batch", "1,8", "--json")
    assert result.exit_code == 0, result.output[-3000:]


def test_cuda_eval_sends_uint8_crops_and_matches_the_cpu(default_run, cli):
    """eval on cuda (uint8 crops on a side stream, normalised on the GPU, one batch in flight)
    gives the CPU's report; the session's logits match the CPU's to fp32 rounding."""
    from inceptionctl.backend import open_artifact
    from inceptionctl.crops import normalize

    run, _, _ = default_run
    args = ("eval", run, "--crops", "1,10", "--limit", "200", "--batch-size", "64",
            "--precision", "fp32", "--json")
    on_gpu, on_cpu = _json(cli(*args, "--device", "cuda")), _json(cli(*args, "--device", "cpu"))
    for g, c in zip(on_gpu["table"], on_cpu["table"]):
        assert abs(g["top1"] - c["top1"]) <= 0.5, (g, c)
    gpu, cpu = open_artifact(str(run), "torch", "cuda"), open_artifact(str(run), "torch", "cpu")
    pre = gpu.info.preprocessing
    crops = torch.randint(0, 256, (96, 3, int(pre["eval_size"]), int(pre["eval_size"])),
                          dtype=torch.uint8)
    # three batches in flight: a pageable slice (staged in pinned memory), a pinned one, and a
    # strided view of pinned memory (staged too); mean and std as lists and as host tensors
    # (sent to the device once, for the same values)
    mean, std = torch.tensor(pre["mean"]), torch.tensor(pre["std"])
    wide = torch.zeros(96, 3, crops.shape[2], 2 * crops.shape[3], dtype=torch.uint8,
                       pin_memory=True)
    wide[..., ::2] = crops
    assert wide.is_pinned() and not wide[64:96, ..., ::2].is_contiguous()
    handles = [gpu.submit_crops(crops[0:32], pre["mean"], pre["std"]),
               gpu.submit_crops(crops[32:64].pin_memory(), mean, std),
               gpu.submit_crops(wide[64:96, ..., ::2], mean, std)]
    got = torch.cat([h() for h in handles])
    assert len(gpu._stats) == 1
    want = cpu.run(normalize(crops, pre["mean"], pre["std"]))
    assert got.device.type == "cpu" and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-3 * float(want.abs().max()), rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_replay_the_eager_forward(default_run, precision):
    """On cuda the torch session replays a graph captured per input: the eager pass's logits
    for each new input (not the captured one's), device results that later calls leave alone,
    one more graph for a smaller last batch and for uint8 crops, and eager passes beyond the
    limit. The eager reference is the same session with its graphs set aside (the same
    weights, autocast and kernels)."""
    from inceptionctl.backend import open_artifact

    run, _, _ = default_run
    session = open_artifact(str(run), "torch", "cuda", precision=precision)
    assert open_artifact(str(run), "torch", "cuda", cuda_graphs=False).graphs is None
    graphs = session.graphs
    assert graphs is not None

    def eager(fn, *args):
        session.graphs = None
        try:
            return fn(*args)
        finally:
            session.graphs = graphs

    pre = session.info.preprocessing
    size = int(pre["eval_size"])
    torch.manual_seed(0)
    crops = torch.randint(0, 256, (3, 16, 3, size, size), dtype=torch.uint8)
    floats = (crops.float() / 64 - 2).cuda()
    tol = 1e-4 if precision == "fp32" else 2e-2
    with torch.inference_mode():
        kept = [session._forward_device(floats[i]) for i in range(3)]  # the first captures
        assert all(k.device.type == "cuda" for k in kept)
        for i in range(3):
            want = eager(session._forward_device, floats[i])
            assert torch.allclose(kept[i], want, atol=tol * float(want.abs().max()), rtol=0), i
        assert not torch.equal(kept[0], kept[1])
    # another batch size may take other cuDNN kernels (TF32 in fp32): a looser bound
    cross = max(tol, 5e-3)
    last = session.run(floats[0][:5].cpu())
    assert torch.allclose(last, kept[0][:5].cpu(), atol=cross * float(kept[0].abs().max()),
                          rtol=0)
    got = session.submit_crops(crops[1], pre["mean"], pre["std"])()
    want = eager(lambda: session.submit_crops(crops[1], pre["mean"], pre["std"])())
    assert torch.allclose(got, want, atol=tol * float(want.abs().max()), rtol=0)
    assert len(graphs.captured) == 3 and graphs.failed is None
    graphs.limit = 4
    for n in (1, 2, 3):  # past a limit of 4: eager, and still right
        out = session.run(floats[2][:n].cpu())
        want = kept[2][:n].cpu()
        assert torch.allclose(out, want, atol=cross * float(want.abs().max()), rtol=0)
    assert len(graphs.captured) == graphs.limit
