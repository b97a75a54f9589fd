"""The benchmark runner works end to end at smoke size (the full run is `make bench`)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_smoke(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] >= 1
    (goal,) = [g for g in data["goals"] if g["name"].startswith("P3")]
    choice = goal["extra"]["precision_choice"]
    # the target follows the measured choice: 2.0x where a lower precision pays, 1.6x in fp32
    assert goal["target"] == (1.6 if choice["precision"] == "fp32" else 2.0)
    assert goal["measured"] > 0 and goal["details"]["precision"] == choice["precision"]
    # measured now (on a busy machine too: other tests may run beside this one), never cached
    assert choice["source"] in ("probe", "probe, busy", "only")
    assert "P3 train img/s vs naive: " in result.stdout
    assert data["machine"]["cpu"] in result.stdout.splitlines()[0]
    assert set(data["machine"]["cpu_flags"]) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"}
    assert goal["details"]["naive img/s"] > 0 and goal["details"]["ours peak MiB"] > 0
    # P3 is against the naive loop as a plain script (its own process); beside it, the ratio
    # against the same loop in the bench's process, where freed memory is kept
    p3 = goal["details"]
    assert goal["measured"] == p3["ours img/s"] / p3["naive img/s"]
    assert p3["vs naive, memory kept"] == p3["ours img/s"] / p3["naive img/s, memory kept"]
    # where the probe chose a lower precision, ours in fp32 beside it (what a CPU without fast
    # bf16 runs, where the target is 1.6x)
    if choice["precision"] != "fp32":
        assert p3["fp32 vs naive"] == p3["ours fp32 img/s"] / p3["naive img/s"] > 0
    else:
        assert "ours fp32 img/s" not in p3
    assert "P3 train img/s vs naive" in result.stdout
    (p4,) = [g for g in data["goals"] if g["name"].startswith("P4")]
    assert p4["target"] == 0.9 and p4["details"]["eval crops/s"] > 0
    # P2's plain sessions ran in a process of their own (one at smoke size), its ratio is P2
    (p2,) = [g for g in data["goals"] if g["name"].startswith("P2")]
    assert p2["target"] == 3.0 and p2["details"]["int8 img/s"] > 0
    assert p2["measured"] == p2["details"]["int8 img/s"] / p2["details"]["fp32 img/s"]
    assert len(p2["details"]["int8/fp32 per process"].split()) == 1
    # beside it, ONNX Runtime's own int8 / fp32 multiply rates of the moment (P2's ceiling)
    gemm = p2["details"]
    assert gemm["onnxruntime int8 GEMM GOP/s"] > 0 and gemm["onnxruntime fp32 GEMM GFLOP/s"] > 0
    assert gemm["int8/fp32 GEMM"] == (gemm["onnxruntime int8 GEMM GOP/s"]
                                      / gemm["onnxruntime fp32 GEMM GFLOP/s"])
    # P1's limit is the fastest multiply measured, ONNX Runtime's included
    (p1,) = [g for g in data["goals"] if g["name"].startswith("P1")]
    d1 = p1["details"]
    assert d1["GEMM GFLOP/s"] == max(d1["torch GEMM GFLOP/s"], d1["onnxruntime GEMM GFLOP/s"])
    assert p1["measured"] == d1["img/s"] / d1["limit img/s"]
    (p6,) = [g for g in data["goals"] if g["name"].startswith("P6")]
    assert p6["target"] == 1.0 and p6["measured"] > 0
    assert p6["details"]["ours 1 worker img/s"] > 0
    assert p6["details"]["reference 1 worker img/s"] > 0
    assert p6["details"]["workers for 3000 img/s (ours)"] >= 1


def test_make_test_gpu_fails_loudly_without_a_gpu(tmp_path):
    import shutil

    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"],
                                                      capture_output=True).returncode == 0:
        import pytest

        pytest.skip("this machine has an NVIDIA GPU")
    venv = tmp_path / "venv"
    stamp = venv / ".installed"  # the install step is not what is tested here
    result = subprocess.run(["make", "-s", "-o", str(stamp), "test-gpu", f"VENV={venv}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "make test-gpu: no NVIDIA GPU here" in result.stderr


def _junit(path: Path, cases: list[bool]) -> Path:
    body = "".join(f'<testcase name="t{i}">{"<skipped/>" if skip else ""}</testcase>'
                   for i, skip in enumerate(cases))
    path.write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


def test_a_gpu_run_where_every_test_skipped_fails(tmp_path):
    script = str(ROOT / "benchmarks" / "gpu_tests_ran.py")
    for cases, ok in (([True, True], False), ([], False), ([True, False], True)):
        report = _junit(tmp_path / "r.xml", cases)
        result = subprocess.run([sys.executable, script, str(report)], capture_output=True,
                                text=True)
        assert (result.returncode == 0) == ok, result.stderr
        assert ("FAILED: no GPU test ran" in result.stderr) != ok
    missing = subprocess.run([sys.executable, script, str(tmp_path / "none.xml")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no readable test report" in missing.stderr


def test_gpu_check_script_parses():
    result = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wrong = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--test"],
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.strip() == \
        "gpu_check.sh: unknown option '--test' (expected --tests or --dry-run)"


@__import__("pytest").mark.slow
def test_gpu_check_dry_run_prints_its_table(tmp_path):
    import os

    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "infer      ok" in out and "train      ok" in out and "decode     ok" in out
    assert "decode jpeg b8 gpu/cpu loader" in out and "cpu path: uint8 crops/all" in out
    assert "eval bf16 b2" in out and re.search(r"train googlenet-small b2 ours-bf16/fp32", out)
    # the train row's "ours" is the product's training step; the plain loops are beside it
    (train,) = [json.loads(line) for line in (tmp_path / "train.out").read_text().splitlines()]
    assert train["amp"] == "ours-bf16" and train["amp_img_s"] == train["ours-bf16_img_s"]
    assert train["fp32_img_s"] > 0 and train["bf16_img_s"] > 0
    # one per precision: fp32 and bf16 (fp16 autocast is CUDA's, not run on a CPU)
    assert len((tmp_path / "infer.out").read_text().splitlines()) == 2


def test_p2_says_when_the_cpus_own_int8_multiply_caps_it():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_infer import _ceiling_note
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert _ceiling_note(4.4, 3.0, vnni=True) == _ceiling_note(None, 3.0, vnni=False) == ""
    note = _ceiling_note(1.87, 3.0, vnni=False)
    assert "runs only 1.87x its fp32 one" in note and "no VNNI" in note and "3x" in note
    assert "no VNNI" not in _ceiling_note(2.5, 3.0, vnni=True)
