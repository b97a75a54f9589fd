"""`make bench`: every speed goal as a ratio against a baseline measured in the same run.

Usage: python benchmarks/run.py [--quick] [--out bench.json]
--quick shrinks every measurement to a smoke run (what the test suite checks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_eval  # noqa: E402
import bench_infer  # noqa: E402
import bench_loader  # noqa: E402
import bench_train  # noqa: E402
from common import report  # noqa: E402
from inceptionctl.speed import busy_fraction  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 iteration")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)
    # as `inceptionctl` runs: freed memory stays in the process (both sides of every ratio but
    # P3's, whose naive loop runs as a plain script, in a process of its own)
    from inceptionctl.host import keep_freed_memory

    keep_freed_memory()
    busy = busy_fraction()  # others' share of the CPUs before the run: a warning where high
    goals = []
    cpu = torch.device("cpu")
    if args.quick:
        goals.append(bench_train.measure(cpu, batch=2, warmup=0, iters=1, probe_budget_s=0.0,
                                            rounds=1))
        goals.append(bench_eval.measure("googlenet-small", images=2, batch=16, iters=1,
                                        image_size=(48, 40), workers=0))
        goals += bench_infer.measure(batch=2, warmup=0, iters=1, recipe_name="googlenet-small",
                                     processes=1, plain_iters=1, rounds=1, gemm_n=128)
        goals.append(bench_loader.measure(count=48, images=16, batch=8, rounds=1))
    else:
        goals.append(bench_train.measure(cpu))
        goals.append(bench_eval.measure())
        goals += bench_infer.measure()
        goals.append(bench_loader.measure())
        if torch.cuda.is_available():
            goals += bench_infer.measure_gpu()
            goals.append(bench_train.measure(torch.device("cuda"), batch=64, warmup=5, iters=20,
                                            rounds=1))
    code = report(goals, args.out, busy)
    return 0 if args.quick else code


if __name__ == "__main__":
    raise SystemExit(main())
