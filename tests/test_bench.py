"""The benchmark runner works end to end at smoke size (the full run is `make bench`)."""

import json
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
    assert choice["source"] in ("probe", "only") and f"P3 train img/s vs naive: " in result.stdout
    assert data["machine"]["cpu"] in result.stdout.splitlines()[0]
    assert set(data["machine"]["cpu_flags"]) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"}
    assert goal["details"]["naive img/s"] > 0 and goal["details"]["ours peak MiB"] > 0
    assert "P3 train img/s vs naive" in result.stdout
    (p4,) = [g for g in data["goals"] if g["name"].startswith("P4")]
    assert p4["target"] == 0.9 and p4["details"]["eval crops/s"] > 0
