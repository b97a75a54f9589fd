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
    assert goal["target"] == 2.0 and goal["measured"] > 0
    assert goal["details"]["naive img/s"] > 0 and goal["details"]["ours peak MiB"] > 0
    assert "P3 train img/s vs naive" in result.stdout
    (p4,) = [g for g in data["goals"] if g["name"].startswith("P4")]
    assert p4["target"] == 0.9 and p4["details"]["eval crops/s"] > 0
