#!/usr/bin/env bash
# The GPU check: install fastmlp without dependencies, run the GPU tests, then the GPU benchmarks; JSON to $OUT.
#
# For a machine with an NVIDIA GPU, CuPy for CUDA 13 (cupy-cuda13x) preinstalled and no network, such as this
# workplace's device tool (whose image also has numpy, numba, click, scipy and pytest):
#
#     bash bench/gpu_check.sh                  # from the repository root; $OUT, if set, receives the results
#
# Python packages that machine lacks travel as wheels in .whl/ (or $WHEELS) and are installed from there, offline.
# The check itself needs none; the protocol's search needs scikit-optimize (and its pyaml), which you would fetch
# on a machine with a network, from the repository root:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .whl scikit-optimize==0.10.2 pyaml
# (.whl/ is ignored by git: never commit the wheels.) With the device tool, name .whl in `carry`.
#
# Steps and time budget (must finish in under 8 minutes; each step has its own timeout):
#   environment  nvidia-smi, versions                                     seconds
#   install      pip install --no-deps --no-build-isolation -e .          ~10 s   (falls back to PYTHONPATH)
#   tests        pytest tests/test_gpu.py: nvcc and NVRTC compile checks,  < 240 s (Numba compiles the CPU
#                then every GPU test against the reference / CPU engine            engine for the comparisons)
#                pytest -m gpu on the other test files (the NTK on CuPy,  < 60 s
#                a sweep on the GPU)
#   benchmarks   bench/bench_gpu.py: W1-W4 with and without CUDA graphs,  < 150 s
#                W2 TF32, W2 M=400, W4 M=100, the CPU engine on W1-W4
# Output: $OUT/gpu_check.log, gpu_tests.xml (JUnit), bench_gpu.jsonl, summary.json.
# Exit status: 0 all passed and W2 M=400 reached 10 TFLOP/s; 1 a test or the benchmark failed; 3 below the target.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || echo "no nvidia-smi"
$PY -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__,
'cupy', cupy.__version__)"

step "install (offline, no dependencies)"
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastmlp-site "$WHEELS"/*.whl \
        && export PYTHONPATH=/tmp/fastmlp-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .; then
    echo "pip install failed: using the checkout through PYTHONPATH"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -m fastmlp.cli info || { echo "fastmlp does not import"; exit 1; }

step "GPU tests"
timeout 240 $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py --junitxml="$OUT_DIR/gpu_tests.xml"
tests=$?
step "the other modules' GPU tests (pytest -m gpu)"
timeout 60 $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests --ignore=tests/test_gpu.py
other=$?
[ "$other" -eq 5 ] && other=0          # 5: no test selected
[ "$tests" -eq 0 ] && tests=$other
$PY - "$OUT_DIR/gpu_tests.xml" <<'EOF' || true
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s[0]
print("tests:", {k: s.get(k) for k in ("tests", "failures", "errors", "skipped", "time")})
EOF

step "benchmarks"
timeout 150 $PY bench/bench_gpu.py --out-dir "$OUT_DIR"
bench=$?

step "done: tests exit $tests, benchmarks exit $bench (3: below the 10 TFLOP/s target)"
if [ "$tests" -ne 0 ] || { [ "$bench" -ne 0 ] && [ "$bench" -ne 3 ]; }; then
    exit 1
fi
[ "$bench" -eq 3 ] && exit 3
exit 0
