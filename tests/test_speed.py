"""The timed profile: every JSON field on tiny settings, unavailable backends as rows."""

import json
import os
import time

import pytest

from inceptionctl import load_recipe
from inceptionctl.speed import SpeedOptions, percentile, timed_profile

ROW_FIELDS = {"backend", "precision", "batch", "mode", "available", "reason", "latency_ms",
              "images_per_s", "gflops", "peak_fraction", "peak_memory_mib", "iterations"}


def test_percentile_matches_numpy():
    import numpy as np

    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.0]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_the_limit_is_the_fastest_multiply_measured(tiny_recipe, monkeypatch):
    """Torch's multiply, a profiled backend's own (ONNX Runtime's), and on the CPU fp32's for
    bf16 and int8 where faster: a row never reads against a slower library's rate."""
    import inceptionctl.speed as speed
    from inceptionctl.backends.onnxruntime import OnnxRuntimeBackend

    torch_rates = {"fp32": 100.0, "bf16": 2.0, "int8": 0.0}  # bf16, int8: no fast path
    monkeypatch.setattr(speed, "matmul_peak", lambda device, p, **kw: torch_rates[p])
    monkeypatch.setattr(OnnxRuntimeBackend, "matmul_rates",
                        lambda self, device: {"fp32": 150.0, "int8": 400.0})
    recipe = load_recipe(tiny_recipe)

    def profile(backends, precisions):
        report = timed_profile(SpeedOptions(recipe=recipe, backends=backends,
                                            precisions=precisions, batches=[2], warmup=0,
                                            iters=1)).to_json()
        for r in report["rows"]:
            assert r["peak_fraction"] == pytest.approx(
                r["gflops"] / report["peaks"][f"cpu/{r['precision']}"])
        return report["peaks"]

    assert profile(["torch"], ["fp32", "bf16"]) == {"cpu/fp32": 100.0, "cpu/bf16": 100.0}
    assert profile(["torch", "onnxruntime"], ["fp32", "bf16", "int8"]) == {
        "cpu/fp32": 150.0, "cpu/bf16": 150.0, "cpu/int8": 400.0}


def test_onnxruntime_multiplies_with_its_own_library_on_the_cpu():
    from inceptionctl.backend import get_backend

    ort = get_backend("onnxruntime")
    rates = ort.matmul_rates("cpu", n=256, rounds=1, iters=2)
    assert set(rates) == {"fp32", "int8"} and min(rates.values()) > 0
    assert ort.matmul_rates("cuda") == {} and get_backend("torch").matmul_rates("cpu") == {}


def test_timed_profile_tiny(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    report = timed_profile(SpeedOptions(recipe=recipe, backends=["torch", "tensorrt"],
                                        precisions=["fp32", "bf16"], batches=[1, 4], warmup=1,
                                        iters=2, train=True))
    data = json.loads(json.dumps(report.to_json()))
    assert data["schema"] == "inceptionctl.speed/1"
    assert {"device", "cpu", "gpu", "threads", "versions"} <= set(data["machine"])
    assert data["macs_per_image"] > 0 and data["peaks"]["cpu/fp32"] > 0
    rows = data["rows"]
    for r in rows:
        assert set(r) == ROW_FIELDS
    timed = [r for r in rows if r["available"]]
    assert {(r["backend"], r["precision"], r["batch"], r["mode"]) for r in timed} == {
        ("torch", p, b, m) for p in ("fp32", "bf16") for b in (1, 4)
        for m in ("inference", "train")}
    for r in timed:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and r["iterations"] == 2
        assert r["images_per_s"] == pytest.approx(1000.0 * r["batch"] / lat["p50"])
        assert r["gflops"] > 0 and 0 < r["peak_fraction"] and r["peak_memory_mib"] > 0
    try:
        import tensorrt  # noqa: F401
        have_trt = True
    except ImportError:
        have_trt = False
    if not have_trt:
        (trt,) = [r for r in rows if r["backend"] == "tensorrt"]
        assert not trt["available"] and "tensorrt not installed" in trt["reason"]


def test_profile_time_cli(cli, tiny_recipe, tmp_path):
    png = tmp_path / "speed.png"
    out = cli("profile", "--recipe", tiny_recipe, "--time", "--backend", "torch", "--batch", "2",
              "--iters", "1", "--warmup", "0", "--plot", png, "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["speed"]["rows"][0]["batch"] == 2 and data["totals"]["params"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = cli("profile", "--recipe", tiny_recipe, "--time", "--batch", "x")
    assert bad.exit_code == 2 and "--batch x" in bad.stderr
    noplot = cli("profile", "--recipe", tiny_recipe, "--plot", png)
    assert noplot.exit_code == 2 and "add --time" in noplot.stderr


def test_torch_fp16_on_a_cpu_is_a_row_that_says_why_not_a_timing(cli, tiny_recipe):
    """fp16 autocast on a CPU is an emulation no one deploys (its 'of peak' came out above
    100% against the fp16 GEMM limit): the row is unavailable, as predict refuses it."""
    out = cli("profile", "--recipe", tiny_recipe, "--time", "--backend", "torch", "--precision",
              "fp16,fp32", "--batch", "2", "--iters", "1", "--warmup", "0", "--device", "cpu",
              "--json")
    assert out.exit_code == 0, out.stderr
    rows = {r["precision"]: r for r in json.loads(out.stdout)["speed"]["rows"]}
    assert rows["fp32"]["available"] and not rows["fp16"]["available"]
    assert rows["fp16"]["reason"] == ("torch backend: fp16 needs a CUDA device; on CPU use bf16 "
                                      "or fp32")


def test_a_backend_or_precision_named_twice_is_timed_once(cli, tiny_recipe):
    twice = cli("profile", "--recipe", tiny_recipe, "--time", "--backend", "torch,torch",
                "--precision", "fp32,fp32", "--batch", "2,2", "--iters", "1", "--warmup", "0",
                "--device", "cpu", "--json")
    assert twice.exit_code == 0, twice.stderr
    assert len(json.loads(twice.stdout)["speed"]["rows"]) == 1


def _row_line(stdout, backend, precision):
    (line,) = [ln for ln in stdout.splitlines()
               if ln.startswith("│") and f" {backend} " in ln and f" {precision} " in ln]
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_profile_time_int8_row_has_a_number(cli):
    """int8 calibrates on the embedded digits by default, says so, and is timed."""
    out = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "onnxruntime",
              "--precision", "int8", "--batch", "1", "--iters", "2", "--warmup", "0")
    assert out.exit_code == 0, out.stderr
    said = [ln for ln in out.stderr.splitlines() if "embedded digits" in ln]
    assert said == ["int8: calibrating on 16 images of the embedded digits (--calib-data PATH "
                    "for your own)"]
    cells = _row_line(out.stdout, "onnxruntime", "int8")
    assert cells[3] == "1" and float(cells[4]) > 0 and float(cells[7].replace(",", "")) > 0
    given = cli("profile", "--recipe", "googlenet-small", "--time", "--backend", "onnxruntime",
                "--precision", "int8", "--batch", "1", "--iters", "1", "--warmup", "0",
                "--calib-data", "digits", "--json")
    assert given.exit_code == 0, given.stderr
    assert "embedded digits" not in given.stderr  # asked for, so nothing to say
    speed = json.loads(given.stdout)["speed"]
    (row,) = speed["rows"]
    assert row["available"] and row["precision"] == "int8" and row["latency_ms"]["p50"] > 0
    # read against an int8 multiply (ONNX Runtime's own or torch's), or fp32's where faster
    assert set(speed["peaks"]) == {"cpu/int8", "cpu/fp32"}
    assert speed["peaks"]["cpu/int8"] >= speed["peaks"]["cpu/fp32"] > 0
    assert row["peak_fraction"] == pytest.approx(row["gflops"] / speed["peaks"]["cpu/int8"])


def test_profile_calib_data_is_checked(cli, tmp_path):
    missing = cli("profile", "--recipe", "googlenet-small", "--time", "--precision", "int8",
                  "--calib-data", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "--calib-data" in missing.stderr
    assert "no such folder" in missing.stderr
    unreadable = tmp_path / "unreadable" / "a"
    unreadable.mkdir(parents=True)
    for i in range(2):
        (unreadable / f"{i}.png").write_bytes(b"not a png")
    bad = cli("profile", "--recipe", "googlenet-small", "--time", "--precision", "int8",
              "--backend", "onnxruntime", "--batch", "1", "--calib-data", unreadable.parent)
    assert bad.exit_code == 2, bad.stdout  # the user's images, not an unavailable backend
    assert bad.stderr.strip().splitlines()[-1] == (f"error: {unreadable.parent}: none of the 2 "
                                                   f"images could be read")
    untimed = cli("profile", "--recipe", "googlenet-small", "--calib-data", "digits")
    assert untimed.exit_code == 2 and "add --time" in untimed.stderr


def test_an_unavailable_reason_is_a_note_under_the_table():
    from rich.console import Console

    from inceptionctl.speed import SpeedReport, SpeedRow, render

    reason = ("tensorrt not installed: pip install 'inceptionctl[tensorrt]', a reason long "
              "enough to stretch any column it sat in, as the install hints of plugins are")
    rows = [SpeedRow("tensorrt", p, 0, available=False, reason=reason) for p in ("fp32", "int8")]
    machine = {"device": "cpu", "cpu": "c", "gpu": None, "threads": 1, "versions": {}}
    report = SpeedReport("r", 32, 1, machine, {"cpu/fp32": 10.0}, rows)
    console = Console(record=True, width=300)
    console.print(render(report))
    lines = console.export_text().splitlines()
    table = [ln for ln in lines if ln.startswith(("│", "┃", "┏", "└"))]
    assert all("not installed" not in ln for ln in table)
    assert max(map(len, table)) < 120  # the reason does not widen the table
    assert sum("unavailable (1)" in ln for ln in table) == 2  # one note for both rows
    notes = " ".join(ln.strip() for ln in lines if ln not in table)  # wrapped to the table
    assert f"(1) {reason}" in notes


def test_profile_time_auto_rows_name_the_measured_choice(cli, monkeypatch, tmp_path):
    """--precision auto: the torch rows (inference and training) time what auto measured and
    say it (`auto:bf16` or `auto:fp32`); ONNX Runtime, whose files fix their precision, has no
    auto row."""
    from inceptionctl import runtime

    monkeypatch.setattr(runtime, "cache_path", lambda: tmp_path / "precision.json")
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    out = cli("profile", "--recipe", "googlenet-small", "--time", "--backend",
              "torch,onnxruntime", "--precision", "auto", "--batch", "2", "--iters", "1",
              "--warmup", "0", "--train", "--json")
    assert out.exit_code == 0, out.stderr
    rows = json.loads(out.stdout)["speed"]["rows"]
    assert [(r["backend"], r["mode"]) for r in rows] == [("torch", "inference"),
                                                         ("torch", "train")]
    said = [ln for ln in out.stderr.splitlines() if ln.startswith("precision auto -> ")]
    assert len(said) == 2 and all("measured now: fp32 " in ln for ln in said)
    for row, line in zip(rows, said):
        assert row["available"] and row["precision"] == "auto:" + line.split()[3]


def test_the_cpu_limit_is_the_faster_gemm_library(monkeypatch):
    """MKL's torch.mm takes its AVX2 path on AMD CPUs: the limit must also time oneDNN's GEMM."""
    import time

    import torch

    from inceptionctl.speed import matmul_peak

    # the stall dwarfs a 256-cube product even when other processes hold the CPUs (there a
    # two-thread GEMM waits a time slice at each barrier: about 2 GFLOP/s, 12x the stalled rate)
    n, stall = 256, 0.2
    mm = torch.mm

    def slow_mm(a, b):  # a GEMM library at a fraction of the machine's rate
        time.sleep(stall)
        return mm(a, b)

    monkeypatch.setattr(torch, "mm", slow_mm)
    peak = matmul_peak(torch.device("cpu"), "fp32", n=n, iters=3)
    assert peak > 3 * 2.0 * n ** 3 / stall / 1e9  # oneDNN's rate, not the stalled torch.mm's


def test_the_int8_limit_is_an_int8_multiply(monkeypatch):
    import torch

    from inceptionctl.speed import matmul_peak

    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.dtype) or int_mm(a, b))
    assert matmul_peak(torch.device("cpu"), "int8", n=256, iters=2) > 0
    assert calls and set(calls) == {torch.int8}

    def missing(a, b):
        raise RuntimeError("_int_mm: not implemented for this device")

    monkeypatch.setattr(torch, "_int_mm", missing)
    assert matmul_peak(torch.device("cpu"), "int8", n=256, iters=2) == 0.0


def test_a_slow_gemm_library_is_timed_at_a_smaller_size(monkeypatch):
    """bf16 on a CPU without it multiplies at a few GFLOP/s: the limit must not take minutes."""
    import time

    import torch

    from inceptionctl.speed import matmul_peak

    sizes = []

    def slow_mm(a, b):  # 1 GFLOP/s of multiply-adds: a 2048-cube product would take 8.6 s
        sizes.append(a.shape[0])
        time.sleep(a.shape[0] ** 3 / 1e9)
        return a

    monkeypatch.setattr(torch, "mm", slow_mm)
    started = time.perf_counter()
    peak = matmul_peak(torch.device("cpu"), "bf16", n=2048, iters=3)
    assert time.perf_counter() - started < 5.0
    assert set(sizes) == {512}  # timed where one product takes about the budget
    assert 1.0 < peak <= 2.0  # 2 operations per multiply-add at 1 G multiply-adds/s


def test_one_stalled_call_does_not_shrink_the_gemm(monkeypatch):
    """On a shared machine one product can stall for a time slice: the probe takes the fastest
    of a few calls, so a fast library is still timed at full size."""
    import torch

    from inceptionctl import speed

    sizes, timed = [], []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: sizes.append(a.shape[0]) or int_mm(a, b))

    def clock(call, device, warmup, iters, seconds):  # 1 TOP/s, but the first timed call stalls
        call()
        timed.append(sizes[-1])
        return [0.5 if len(timed) == 1 else 2.0 * sizes[-1] ** 3 / 1e12] * iters

    monkeypatch.setattr(speed, "time_calls", clock)
    assert speed.matmul_peak(torch.device("cpu"), "int8", n=1024, iters=2) == pytest.approx(1000)
    assert timed[-1] == 1024  # the limit's product is the full size


@pytest.mark.real_load
def test_busy_fraction_sees_other_processes():
    import subprocess
    import sys

    from inceptionctl.speed import busy_fraction

    if busy_fraction(0.05) is None:
        pytest.skip("no /proc/stat here")
    with open("/proc/stat") as fh:
        cpus = sum(1 for line in fh if line[:3] == "cpu" and line[3:4].isdigit())
    if len(os.sched_getaffinity(0)) < cpus:  # /proc/stat counts the host's CPUs
        pytest.skip("this process may not use every CPU /proc/stat counts")
    spin = "import time\nt = time.time() + 20\nwhile time.time() < t: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cpus)]
    try:
        time.sleep(0.3)
        assert busy_fraction(0.5) > 0.6
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_profile_warns_when_the_machine_was_busy():
    from rich.console import Console

    from inceptionctl.speed import SpeedReport, render

    machine = {"device": "cpu", "gpu": None, "cpu": "Some CPU", "threads": 2, "versions": {}}
    out = []
    for busy in (0.9, 0.05, None):
        report = SpeedReport("googlenet", 224, 1, {**machine, "busy_before": busy}, {}, [])
        console = Console(width=200, record=True)
        console.print(render(report))
        out.append(console.export_text())
    assert "warning: the machine was busy: other processes used 90% of its" in out[0]
    assert "busy" not in out[1] and "busy" not in out[2]


def test_a_backend_asked_for_none_of_its_precisions_says_so(tiny_recipe):
    """torch has no int8 and onnxruntime no auto: a row says so instead of an empty table."""
    recipe = load_recipe(tiny_recipe)
    for backend, precision, reason in (
            ("torch", "int8", "torch runs none of int8: its precisions are fp32, bf16, fp16"),
            ("onnxruntime", "auto", "onnxruntime runs none of auto: its precisions are fp32, "
                                    "int8 (auto times a backend that switches precision, as "
                                    "torch does)")):
        report = timed_profile(SpeedOptions(recipe=recipe, backends=[backend],
                                            precisions=[precision], batches=[1], warmup=0,
                                            iters=1))
        (row,) = report.rows
        assert not row.available and row.precision == precision and row.reason == reason


def test_the_caption_says_what_gflops_counts():
    from rich.console import Console

    from inceptionctl.speed import SpeedReport, SpeedRow, render

    machine = {"device": "cpu", "gpu": None, "cpu": "c", "threads": 2, "versions": {}}
    row = SpeedRow("torch", "fp32", 4, "inference", True, "",
                   {"p50": 10.0, "p90": 11.0, "p99": 12.0, "mean": 10.5}, 400.0,
                   2 * 1_582_671_872 * 400 / 1e9, 0.5, 100.0, 20)
    console = Console(width=200, record=True)
    console.print(render(SpeedReport("googlenet", 224, 1_582_671_872, machine, {}, [row])))
    text = console.export_text()
    assert "GFLOP/s: 2 x 1.583 G multiply-adds per image as Table 1 counts them" in text
    assert "1,266.1" in text  # the row's GFLOP/s is that count at its rate
