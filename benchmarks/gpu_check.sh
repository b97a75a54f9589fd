#!/usr/bin/env bash
# One prepared check for a lent GPU machine (about 5 minutes on one H100), run from the repository
# root: the CUDA tests, then the torch backend's inference and training speed on cuda and the
# training loader's JPEG decoding (CPU workers against the GPU), then one table. It uses the
# machine's own torch and never installs tensorrt (its wheels are too large to carry; the
# TensorRT tests skip here and say so). Exit status: non-zero if any step failed.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --tests    # there, the tests alone (a re-check after a fix)
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: CPU, toy sizes, no tests; checks the script
set -u

DRY=""
TESTS_ONLY=""
case "${1:-}" in
    --dry-run) DRY="--dry-run" ;;
    --tests) TESTS_ONLY=1 ;;
    "") ;;
    *) echo "gpu_check.sh: unknown option '$1' (expected --tests or --dry-run)" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$(mktemp -d)}"
# a dry run on a development machine takes the environment `make` made (the machine's python
# may have no torch); on the GPU machine, the machine's own python and torch
if [ -n "$DRY" ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
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
    # The package, on the machine's torch: a venv that sees the machine's packages, our code
    # installed editable without dependencies (nothing is downloaded). When that python is
    # itself a venv, --system-site-packages would reach the base interpreter instead, so a .pth
    # file adds its site-packages. If the machine's setuptools cannot build us, the source tree
    # is found through a finder that maps pyproject's package-dir, with a hand-made dist-info that declares our backends' entry points.
    step install 60 "$PY" - "$OUT/venv" "$ROOT" <<'PYEOF'
import re, site, subprocess, sys, sysconfig
from pathlib import Path

venv, root = Path(sys.argv[1]), Path(sys.argv[2])
subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
vpy = str(venv / "bin" / "python")
purelib = Path(subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
(purelib / "zz_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
pip = subprocess.run([vpy, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                      "-e", str(root)], capture_output=True, text=True)
if pip.returncode != 0:
    print("pip install -e failed; using the source tree:", pip.stderr.strip().splitlines()[-1:],
          file=sys.stderr)
    toml = (root / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', toml, re.M).group(1)
    section = toml.split('[project.entry-points."inceptionctl.backends"]')[1].split("\n[")[0]
    info = purelib / f"inceptionctl-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: inceptionctl\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[inceptionctl.backends]" + section.replace('"', "")
                                           .rstrip() + "\n")
    # What setuptools' editable finder does: map the packages to the folders pyproject names.
    (purelib / "_inceptionctl_src.py").write_text(f"""import importlib.util, sys
from pathlib import Path
DIRS = {{"inceptionctl": Path({str(root / "inceptionctl")!r}),
         "inceptionctl.recipes": Path({str(root / "recipes")!r}),
         "inceptionctl.backends": Path({str(root / "backends")!r})}}
class Finder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in DIRS:
            return importlib.util.spec_from_file_location(
                name, DIRS[name] / "__init__.py", submodule_search_locations=[str(DIRS[name])])
        return None
sys.meta_path.append(Finder)
""")
    (purelib / "zz_inceptionctl_src.pth").write_text("import _inceptionctl_src\n")
out = subprocess.run([vpy, "-c", "import torch, inceptionctl; from inceptionctl.backend import "
                      "backend_names; print(torch.__version__, torch.version.cuda, "
                      "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda', "
                      "backend_names())"], capture_output=True, text=True)
print(out.stdout.strip(), out.stderr.strip()[-2000:], sep="\n")
sys.exit(out.returncode)
PYEOF
    # Newer versions of our dependencies than the machine has (typer, say) can travel as wheels:
    # WHEELS=DIR installs DIR/*.whl into that venv, offline.
    if [ -n "${WHEELS:-}" ]; then
        step wheels 60 "$OUT/venv/bin/python" -m pip install --quiet --no-index --no-deps \
            "$WHEELS"/*.whl
    fi
    PY="$OUT/venv/bin/python"
    export PYTHONSAFEPATH=1  # never the checkout's inceptionctl/ from the current folder
    step tests 150 "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
    step tests-ran 10 "$PY" benchmarks/gpu_tests_ran.py "$OUT/gpu-tests.xml"
fi
if [ -z "$TESTS_ONLY" ]; then
    step infer 60 "$PY" benchmarks/gpu_check.py infer $DRY
    step train 110 "$PY" benchmarks/gpu_check.py train $DRY
    step decode 75 "$PY" benchmarks/gpu_check.py decode $DRY
fi

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
rows = [json.loads(l) for f in ("infer.out", "train.out", "decode.out") if (out / f).is_file()
        for l in (out / f).read_text().splitlines() if l.startswith("{")]
print("\ngpu_check: speed (targets: eval >= 0.8x raw forward; training (ours, AMP) >= 2.5x an fp32 loop; "
      "JPEG decode on the GPU >= 1.0x the CPU loader)")
print(f"  {'what':<30}{'raw img/s':>11}{'ours img/s':>11}{'ratio':>7}  target  (host float batch)")
for r in rows:
    if r["step"] == "infer":
        ok = "ok" if r["session_vs_raw"] >= 0.8 else "BELOW"
        print(f"  {'eval ' + r['precision'] + ' b' + str(r['batch']):<30}{r['raw_img_s']:>11}"
              f"{r['session_img_s']:>11}{r['session_vs_raw']:>7}  {ok:<6}  "
              f"({r['run_float_img_s']} img/s, {r['run_float_vs_raw']})")
    elif r["step"] == "decode":
        ok = "ok" if r["gpu_vs_cpu"] >= 1.0 else "BELOW"
        print(f"  {'decode jpeg b' + str(r['batch']) + ' gpu/cpu loader':<30}{r['cpu_img_s']:>11}"
              f"{r['gpu_img_s']:>11}{r['gpu_vs_cpu']:>7}  {ok:<6}  ({r['workers']} workers, "
              f"{r['cpu_per_worker_img_s']} img/s each on the cpu path; {r['jpeg_kb']} KB JPEGs)")
        print(f"  {'  cpu path: uint8 crops/all':<30}{r['cpu_all_in_workers_img_s']:>11}"
              f"{r['cpu_img_s']:>11}{r['crops_vs_all_in_workers']:>7}  {'':<6}  (--decode cpu: "
              f"the workers' uint8 crops, colour on the GPU, against every step in the workers)")
    else:
        ok = "ok" if r["amp_vs_fp32"] >= 2.5 else "BELOW"
        others = ", ".join(f"{k[:-6]} {v}" for k, v in r.items() if k.endswith("_img_s")
                           and k[:-6] in ("fp32-notf32", "bf16", "fp16", "ours-bf16",
                                          "ours-fp16"))
        print(f"  {'train ' + r['recipe'] + ' b' + str(r['batch']) + ' ' + r['amp'] + '/fp32':<30}"
              f"{r['fp32_img_s']:>11}{r['amp_img_s']:>11}{r['amp_vs_fp32']:>7}  {ok:<6}  ({others})")
PYEOF
echo "gpu_check: outputs in $OUT"
exit "$FAILED"
