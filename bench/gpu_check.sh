#!/usr/bin/env bash
# The GPU check: install fastmlp without dependencies, prove that the GPU engine builds and trains and agrees with
# the CPU, then measure: the GPU benchmarks, the quick protocol on the GPU, the rest. JSON to $OUT.
#
# For a machine with an NVIDIA GPU, CuPy for CUDA 13 with NVIDIA's cuBLAS and NVRTC wheels preinstalled (what
# cupy-cuda13x[ctk], fastmlp's `gpu` extra, installs) and no network, such as this workplace's device tool (whose
# image also has numpy, numba, scipy, click, matplotlib, scikit-learn, PyYAML and pytest):
#
#     bash bench/gpu_check.sh                  # from the repository root; $OUT, if set, receives the results
#
# The only Python packages that machine lacks are scikit-optimize (the protocol's optimizer) and its pyaml. Their
# wheels travel in .whl/ (or $WHEELS) and are installed from there, offline and without dependencies (so nothing
# replaces the image's scikit-learn or pytest), into $TMPDIR/fastmlp-site (TMPDIR: /tmp unless set); any other
# wheel there is left alone. Fetch
# them on a machine with a network, from the repository root (.whl/ is ignored by git: never commit the wheels):
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl scikit-optimize==0.10.2 pyaml
# With the device tool, name .whl in `carry`.
#
# The steps run in the order of what their results are worth, each under its own time cap; the caps (CAPS below)
# add up to the budget, GPU_CHECK_BUDGET = 460 s, so that the check fits 8 minutes of an H100 or H200 with the
# machine's start:
#   environment  nvidia-smi, Python
#   install      the two wheels, pip install --no-deps -e . (else PYTHONPATH), fastmlp info
#   preflight    what the later steps import besides CuPy (scikit-optimize for the protocol)
#   smoke        build a GpuEngine and train one epoch (the kernels compile here)
#   gpu-tests    correctness against the CPU and the reference: pytest tests/test_gpu.py (the CPU engine compiles
#                here); no test may be skipped for want of a GPU
#   bench-gpu    bench/bench_gpu.py --parts gpu: W1-W5 with and without graphs, W2 and W5 with M = 400, W2 with
#                TF32, W4 at the paper's M = 40 (each line lands in bench_gpu.jsonl, and summary.json, at once)
#   protocol     fastmlp run, the quick protocol (2-local, D = 500, N = 1000, L = 3, H = 100, 10 folds, 20
#                learning rates in batches of 4, 10 repeats) --backend gpu
#   other-tests  pytest -m gpu on the other test files (the engines' tests, a sweep)
#   bench-cpu    bench/bench_gpu.py --parts cpu --append: the CPU engine on W1-W5, for the GPU/CPU ratios
# At most 8 files in $OUT: gpu_check.log, gpu_check.json (every step: status, exit code, seconds), info.json,
# smoke.json, gpu_tests.json, bench_gpu.jsonl, summary.json, protocol_gpu.json (the JUnit XML stays in $TMPDIR).
# A step the later ones need (environment, install, preflight, smoke) stops the check at once, loudly, before any
# more device time is spent: then the GPU tests would only skip. A failing test or measurement step is reported
# as loudly, the remaining measurements still run (each benchmark checks its own correctness first), and the exit
# status says what happened: 0 all passed and W2 at M = 400 reached 10 TFLOP/s; 1 a step failed; 2 stopped at a
# step the others need; 3 all passed, below the 10 TFLOP/s target.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$PWD/gpu_check_out}
BUDGET=${GPU_CHECK_BUDGET:-460}   # seconds; a step killed at the end may take 10 s more: under 8 minutes
# step:cap in seconds, in the order the steps run; the caps add up to the default budget (tests/test_gpu.py)
CAPS="environment:5 install:20 preflight:5 smoke:45 gpu-tests:140 bench-gpu:130 protocol:60 other-tests:20 bench-cpu:35"
MAX_FILES=8                       # what a device run returns
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
T0=$(date +%s)
STEP=start
STEP_T0=$T0
STEPS=""          # the JSON objects of the steps so far, comma-separated
FAILED=""         # the steps that failed
BELOW_TARGET=0

now() { echo $(( $(date +%s) - T0 )); }
step() { STEP=$1; STEP_T0=$(date +%s); echo "== [$(now)s] $1: $2"; }
write_json() {    # gpu_check.json: status ok | failed | stopped, and every step so far
    printf '{"status": "%s", "stopped_at": %s, "failed": [%s], "wall_s": %d, "budget_s": %d, "steps": [%s]}\n' \
        "$1" "$2" "$(echo "$FAILED" | sed -E 's/([a-z-]+)/"\1"/g; s/ /, /g; s/^, //')" "$(now)" "$BUDGET" \
        "$STEPS" > "$OUT_DIR/gpu_check.json"
}
record() {        # record STATUS RC: the current step's outcome
    local entry
    entry=$(printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d}' "$STEP" "$1" "$2" \
            $(( $(date +%s) - STEP_T0 )))
    STEPS=${STEPS:+$STEPS, }$entry
    write_json running null
}
stop() {          # stop RC MESSAGE: a step the others need cannot work; nothing after it is run
    record stopped "$1"
    echo "!! gpu_check: STOPPED at step '$STEP' (exit $1): $2"
    write_json stopped "\"$STEP\""
    exit 2
}
failed() {        # failed RC MESSAGE: this step failed; the measurements after it still run
    record failed "$1"
    FAILED="$FAILED $STEP"
    local why=""
    { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; } && why=": out of time"
    echo "!! gpu_check: FAILED step '$STEP' (exit $1$why): $2"
}
passed() { record passed 0; echo "== [$(now)s] $STEP: passed"; }
cap() {           # cap STEP: that step's cap in CAPS
    local entry
    for entry in $CAPS; do
        [ "${entry%%:*}" = "$1" ] && { echo "${entry#*:}"; return; }
    done
    echo 0
}
limit() {         # limit: seconds the current step may take, its cap or what is left of the budget
    local left=$(( BUDGET - $(now) )) c
    c=$(cap "$STEP")
    if [ "$left" -lt 5 ]; then
        echo 0
    elif [ "$left" -lt "$c" ]; then
        echo "$left"
    else
        echo "$c"
    fi
}
run_capped() {    # run_capped CMD...: the command under `timeout` for the current step's limit; 124 or 137 when
    local t       # it ran out of time
    t=$(limit)
    if [ "$t" -eq 0 ]; then
        echo "!! gpu_check: no time left in the ${BUDGET} s budget for step '$STEP'" >&2
        return 124
    fi
    timeout -k 5 "$t" "$@"        # SIGTERM at the limit, SIGKILL 5 s later (137)
}

# ---------------------------------------------------------------------------------------------- environment
total=0
for entry in $CAPS; do total=$(( total + ${entry#*:} )); done
echo "gpu_check: steps capped at $total s in all, within a budget of $BUDGET s"
step environment "nvidia-smi, Python"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    || echo "gpu_check: nvidia-smi not found or failed (the GPU steps will say whether CUDA sees a device)"
$PY -c "import sys; print('python', sys.version.split()[0])" || stop 1 "no Python at '$PY' (set PYTHON)"
passed

# ---------------------------------------------------------------------------------------------- install
step install "wheels from .whl, fastmlp without dependencies"
WHEELS=${WHEELS:-.whl}
wheels=$(compgen -G "$WHEELS/scikit_optimize-*.whl"; compgen -G "$WHEELS/pyaml-*.whl")
if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    run_capped $PY -m pip install -q --no-index --no-deps --no-compile --target "${TMPDIR:-/tmp}/fastmlp-site" $wheels \
        || stop 1 "the wheels in $WHEELS do not install"
    export PYTHONPATH="${TMPDIR:-/tmp}/fastmlp-site"${PYTHONPATH:+:$PYTHONPATH}
fi
if ! run_capped $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . ; then
    echo "gpu_check: pip install failed: using the checkout through PYTHONPATH"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -m fastmlp.cli info || stop 1 "fastmlp does not import"
$PY -m fastmlp.cli info --json > "$OUT_DIR/info.json" || stop 1 "fastmlp info --json failed"
passed

# ---------------------------------------------------------------------------------------------- preflight
step preflight "what the later steps import besides CuPy"
$PY - <<'EOF' || stop 1 "a module the check needs is missing (above): put its wheel in .whl (see the header)"
import importlib, sys
missing = []
for name in ("numpy", "numba", "click", "scipy", "matplotlib", "pytest", "skopt", "sklearn"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", ""))
    except Exception as e:
        missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
    sys.exit("gpu_check: missing: " + "; ".join(missing) + " (skopt and sklearn: the quick protocol's optimizer)")
EOF
passed

# ---------------------------------------------------------------------------------------------- smoke
step smoke "build a GpuEngine and train one epoch (the kernels compile now)"
run_capped $PY - "$OUT_DIR/smoke.json" <<'EOF'
import json
import sys
import time

import numpy as np

from fastmlp.provenance import gpu_report

report = gpu_report()
if report["problem"]:
    sys.exit(f"gpu_check: the GPU backend cannot run here: {report['problem']}")
from fastmlp.backend import engine_class

g = np.random.default_rng(0)
x = g.standard_normal((300, 37)).astype(np.float32)
y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)
t0 = time.perf_counter()
e = engine_class("gpu")(x, y, 21, 2, 17, [0.05, 0.1, 0.3], [0, 1, 2])
built = time.perf_counter() - t0
e.train_epochs(1)
trained = time.perf_counter() - t0 - built
if not (np.all(e.epochs == 1) and np.all(np.isfinite(e.train_loss))):
    sys.exit(f"gpu_check: one epoch on the GPU gave epochs {e.epochs} and losses {e.train_loss}")
out = {**report, "build_s": built, "first_epoch_s": trained, "train_loss": [float(v) for v in e.train_loss]}
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(f"gpu_check: GpuEngine built in {built:.1f} s and trained one epoch in {trained:.1f} s on {report['device']} "
      f"({report['cupy']}, CUDA {report['cuda_runtime']}, driver {report['cuda_driver']}, cuBLAS {report['cublas']})")
EOF
rc=$?
[ "$rc" -eq 0 ] || stop "$rc" "the GPU engine cannot be built or train one epoch (above); the GPU tests would only skip"
passed

# ---------------------------------------------------------------------------------------------- tests
step gpu-tests "correctness: pytest tests/test_gpu.py"
JUNIT=$(mktemp "${TMPDIR:-/tmp}/gpu_tests.XXXXXX.xml")
run_capped $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py --junitxml="$JUNIT"
rc=$?
$PY - "$JUNIT" "$OUT_DIR/gpu_tests.json" <<'EOF'
import json, os, sys, xml.etree.ElementTree as ET
if not os.path.getsize(sys.argv[1]):
    print("tests: no JUnit report (pytest did not finish)")
    sys.exit(0)
s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s[0]
counts = {k: s.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
no_gpu = [c.get("name") for c in s.iter("testcase")
          if any("CUDA device" in (k.get("message") or "") for k in c.findall("skipped"))]
json.dump({**counts, "skipped_for_want_of_a_gpu": no_gpu}, open(sys.argv[2], "w"), indent=1)
print("tests:", counts)
if no_gpu:
    sys.exit(f"gpu_check: {len(no_gpu)} GPU tests were skipped for want of a GPU, {no_gpu[0]} among them")
EOF
skipped=$?
if [ "$rc" -ne 0 ]; then
    failed "$rc" "the GPU tests failed"
elif [ "$skipped" -ne 0 ]; then
    failed "$skipped" "GPU tests were skipped although the smoke step trained on the GPU"
else
    passed
fi

# ---------------------------------------------------------------------------------------------- benchmarks
step bench-gpu "bench/bench_gpu.py --parts gpu"
run_capped $PY bench/bench_gpu.py --parts gpu --out-dir "$OUT_DIR"
rc=$?
if [ "$rc" -eq 0 ]; then
    passed
elif [ "$rc" -eq 3 ]; then
    BELOW_TARGET=1
    passed
    echo "== gpu_check: W2 at M = 400 stayed below 10 TFLOP/s (summary.json)"
else
    failed "$rc" "the GPU benchmarks failed"
fi

step protocol "the quick protocol, fastmlp run --backend gpu"
run_capped $PY -m fastmlp.cli run 2-local --D 500 --N 1000 --L 3 --H 100 --B 50 --folds 10 --bo-calls 20 \
    --bo-batch 4 --repeats 10 --n-test 10000 --backend gpu --json > "$OUT_DIR/protocol_gpu.json"
rc=$?
if [ "$rc" -eq 0 ]; then
    $PY - "$OUT_DIR/protocol_gpu.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("protocol:", {"selected_lr": r["selected_lr"], "test_error": r["final"]["test_error"]["mean"], **r["timing"],
                    **r["throughput"]})
EOF
    passed
else
    failed "$rc" "the quick protocol on the GPU failed"
fi

# ---------------------------------------------------------------------------------------------- the rest
step other-tests "pytest -m gpu on the other test files"
run_capped $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests --ignore=tests/test_gpu.py
rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ]; then     # 5: no test selected
    passed
else
    failed "$rc" "the other modules' GPU tests failed"
fi

step bench-cpu "bench/bench_gpu.py --parts cpu --append (the CPU engine for the ratios)"
run_capped $PY bench/bench_gpu.py --parts cpu --append --out-dir "$OUT_DIR"
rc=$?
if [ "$rc" -eq 0 ]; then passed; else failed "$rc" "the CPU benchmarks failed"; fi

# ---------------------------------------------------------------------------------------------- done
files=$(find "$OUT_DIR" -mindepth 1 -maxdepth 1 | wc -l)
if [ "$files" -gt "$MAX_FILES" ]; then
    echo "!! gpu_check: $files files in $OUT_DIR, more than the $MAX_FILES a device run returns"
    FAILED="$FAILED files"
fi
if [ -n "$FAILED" ]; then
    write_json failed null
    echo "!! gpu_check: FAILED steps:$FAILED ($(now) s)"
    exit 1
fi
write_json ok null
echo "== gpu_check: all steps passed in $(now) s"
[ "$BELOW_TARGET" -eq 1 ] && exit 3
exit 0
