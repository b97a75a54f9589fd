#!/usr/bin/env bash
# One prepared check for a lent GPU machine (<= 8 minutes on one H100), run from the repository
# root: the CUDA tests, then the torch backend's inference and training speed on cuda, then one
# table. It uses the machine's own torch and never installs tensorrt (its wheels are too large
# to carry; the TensorRT tests skip here and say so). Exit status: non-zero if any step failed.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: CPU, toy sizes, no tests; checks the script
set -u

DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
STEPS=()
RESULTS=()
FAILED=0

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, time, record ok/FAILED, keep going
    local name="$1" limit="$2"
    shift 2
    local start end rc
    start=$(date +%s)
    echo "== $name (limit ${limit}s)" >&2
    timeout "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    rc=$?
    end=$(date +%s)
    tail -n 25 "$OUT/$name.err" >&2
    STEPS+=("$name")
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("ok $((end - start))s")
    else
        RESULTS+=("FAILED (exit $rc) $((end - start))s")
        FAILED=1
    fi
}

if [ -z "$DRY" ]; then
    step gpu 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    # The package, on the machine's torch: a venv that sees the system site-packages, our code
    # installed editable without dependencies (nothing is downloaded).
    step install 60 bash -c "$PY -m venv --system-site-packages '$OUT/venv' && \
        '$OUT/venv/bin/python' -m pip install --quiet --no-deps --no-build-isolation -e . && \
        '$OUT/venv/bin/python' -c 'import torch, inceptionctl; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'"
    PY="$OUT/venv/bin/python"
    step tests 200 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
    step tests-ran 10 "$PY" benchmarks/gpu_tests_ran.py "$OUT/gpu-tests.xml"
fi
step infer 90 "$PY" benchmarks/gpu_check.py infer $DRY
step train 90 "$PY" benchmarks/gpu_check.py train $DRY

echo
echo "gpu_check: steps"
for i in "${!STEPS[@]}"; do
    printf '  %-10s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"
done
[ -s "$OUT/gpu.out" ] && echo "  device: $(head -n 1 "$OUT/gpu.out")"
[ -s "$OUT/tests.out" ] && echo "  tests: $(tail -n 1 "$OUT/tests.out")"
"$PY" - "$OUT" <<'PYEOF' || FAILED=1
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = [json.loads(l) for f in ("infer.out", "train.out") if (out / f).is_file()
        for l in (out / f).read_text().splitlines() if l.startswith("{")]
print("\ngpu_check: speed (targets: eval >= 0.8x raw forward; AMP training >= 2.5x fp32)")
print(f"  {'what':<28}{'raw img/s':>12}{'ours img/s':>12}{'ratio':>8}  target")
for r in rows:
    if r["step"] == "infer":
        ok = "ok" if r["session_vs_raw"] >= 0.8 else "BELOW"
        print(f"  {'eval ' + r['precision'] + ' b' + str(r['batch']):<28}{r['raw_img_s']:>12}"
              f"{r['session_img_s']:>12}{r['session_vs_raw']:>8}  {ok}")
    else:
        ok = "ok" if r["amp_vs_fp32"] >= 2.5 else "BELOW"
        print(f"  {'train ' + r['recipe'] + ' b' + str(r['batch']) + ' amp/fp32':<28}"
              f"{r['fp32_img_s']:>12}{r['amp_img_s']:>12}{r['amp_vs_fp32']:>8}  {ok}")
PYEOF
echo "gpu_check: outputs in $OUT"
exit "$FAILED"
