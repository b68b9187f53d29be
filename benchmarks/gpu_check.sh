#!/usr/bin/env bash
# The prepared GPU check (DESIGN.md, "Tests, benchmarks, the GPU"): on a machine with one CUDA GPU
# whose python3 holds torch, triton, nvcc, ninja, cmake and pybind11 (no internet, no venv), from
# the repository root:
#
#     OUT=/path/to/results bash benchmarks/gpu_check.sh
#
# builds pydiffuse._C with the CUDA kernels, runs the device tests, `pydiffuse info`, the
# benchmarks (float32 and bfloat16), the UNet fused vs reference, the shape sweeps and the host
# overhead per call, a DDIM loop (also as one CUDA
# graph), the likelihoods and LSGM on the device, and the sampling benchmark, and writes into
# $OUT (at most 10 files):
#   gpu_check.log  every step's command, output and exit status; lsgm.png  LSGM samples
#   report.md      card, date, versions, step summary, test summary, benchmark tables
#   bench_fp32.{json,png}, bench_bf16.{json,png}, bench_unet.json, bench_sampling.json,
#   bench_diffusers.json
# Each step has a timeout and the whole run fits GPU_CHECK_BUDGET_S (default 540 s); a failing
# step is recorded and the next one runs. Results go to benchmarks/results/ with card and date.
#
# Dry run without a GPU: GPU_CHECK_CPU=1 (cpu device, --quick benchmarks, no build unless
# GPU_CHECK_BUILD=1); PYTHON picks the interpreter (default python3).
set -u -o pipefail

OUT=${OUT:-$PWD/out}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
CPU_ONLY=${GPU_CHECK_CPU:-0}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
: >"$LOG"
export PYTHONUNBUFFERED=1 PYDIFFUSE_CUDA_ARCHS=${PYDIFFUSE_CUDA_ARCHS:-90}
# nvcc off the PATH but in the usual place: let CMake find it.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=$PATH:/usr/local/cuda/bin
fi

if [ "$CPU_ONLY" = 1 ]; then
  DEVICE=cpu QUICK=--quick BUILD=${GPU_CHECK_BUILD:-0}
else
  DEVICE=cuda QUICK= BUILD=${GPU_CHECK_BUILD:-1}
fi
START=$SECONDS
SUMMARY=()

# step NAME TIMEOUT_S COMMAND...: logs `+ COMMAND`, its output and its exit status; never fails.
# The timeout is cut to what is left of the budget (15 s kept for the report).
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - 15 - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 5)); then
    SUMMARY+=("$name|skipped|0|no time left in the ${BUDGET}s budget")
    echo "[$name] skipped: no time left" | tee -a "$LOG"
    return 0
  fi
  local t0=$SECONDS rc
  { echo; echo "=== [$name] $(date -u +%H:%M:%S) timeout ${limit}s"; echo "+ $*"; } >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$TMP/$name.out" >>"$LOG"
  rc=$?
  local note=""
  ((rc == 124 || rc == 137)) && note="timed out after ${limit}s"
  SUMMARY+=("$name|$rc|$((SECONDS - t0))|$note")
  echo "=== [$name] exit $rc after $((SECONDS - t0))s $note" >>"$LOG"
  echo "[$name] exit $rc after $((SECONDS - t0))s $note"
}

skip() {  # skip NAME WHY
  SUMMARY+=("$1|skipped|0|$2")
  echo "[$1] skipped: $2" | tee -a "$LOG"
}

if [ "$CPU_ONLY" = 1 ]; then
  skip nvidia-smi "GPU_CHECK_CPU=1"
else
  step nvidia-smi 20 nvidia-smi
fi
step versions 60 bash -c "$PY - <<'EOF'
import platform, torch
print('python', platform.python_version(), '| torch', torch.__version__,
      '| CUDA', torch.version.cuda)
try:
    import triton; print('triton', triton.__version__)
except Exception as err: print('triton: not available', err)
print('cuda available:', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
EOF
if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo 'nvcc: not found'; fi
cmake --version | head -n 1; ninja --version"
if [ "$BUILD" = 1 ]; then
  # Editable install: maps triton_kernels/ to pydiffuse.triton_kernels as setup.py asks.
  step build 240 "$PY" -m pip install --no-index --no-build-isolation --no-deps -e .
else
  skip build "GPU_CHECK_BUILD=0: using the pydiffuse already built here"
fi
# The device tests: every op backend on CUDA, the modules, and the samplers' CUDA-graph replay and
# no-host-sync checks (tests/samplers/test_front_door.py); the rest of the suite is CPU-side. The
# nvcc compile-only checks are left out: the build step compiled every kernel and binding.
step tests 200 "$PY" -m pytest --maxfail=25 -q tests/ops tests/nn tests/samplers/test_front_door.py \
  tests/samplers/test_reproducibility.py --ignore=tests/ops/test_nvcc_compile.py
step info 60 "$PY" -m pydiffuse.cli info
step bench_fp32 110 "$PY" -m pydiffuse.cli bench $QUICK --device "$DEVICE" --dtype float32 \
  --json "$OUT/bench_fp32.json" --plot "$OUT/bench_fp32.png"
step unet 90 "$PY" benchmarks/bench_unet.py --quick --device "$DEVICE" \
  --json "$OUT/bench_unet.json"
step bench_bf16 110 "$PY" -m pydiffuse.cli bench $QUICK --device "$DEVICE" --dtype bfloat16 \
  --json "$OUT/bench_bf16.json" --plot "$OUT/bench_bf16.png"
step overhead 60 "$PY" benchmarks/bench_overhead.py --device "$DEVICE" --repeats 9
step ddim 60 "$PY" -m pydiffuse._demo_loop --device "$DEVICE"
# the shipped models on the device: LSGM samples and NELBO, the digits model's ODE bits/dim
step likelihood 60 bash -c "'$PY' -m pydiffuse.cli sample --ckpt lsgm --n 64 --device $DEVICE \
  --out '$OUT/lsgm.png' && '$PY' -m pydiffuse.cli likelihood --ckpt lsgm --n 32 --device $DEVICE \
  && '$PY' -m pydiffuse.cli likelihood --ckpt digits --method ode --n 8 --rtol 1e-3 --atol 1e-3 \
  --device $DEVICE"
if "$PY" -c "import diffusers" 2>/dev/null; then
  step sampling 90 "$PY" benchmarks/bench_sampling.py $QUICK --device "$DEVICE" \
    --json "$OUT/bench_sampling.json"
  # fused vs plain diffusers models (compiled rows left out: four compiles outrun the budget)
  step diffusers 120 "$PY" benchmarks/bench_diffusers.py --quick --no-compile --device "$DEVICE" \
    --dtype "$([ "$DEVICE" = cuda ] && echo bfloat16 || echo float32)" \
    --json "$OUT/bench_diffusers.json"
else
  skip sampling "diffusers is not installed (benchmarks/bench_sampling.py compares against it)"
fi
# last, on what is left of the budget (quick: each sweep row compiles its own torch.compile graph)
step sweep_shapes 90 "$PY" -m pydiffuse.cli bench --sweep shapes --quick --device "$DEVICE"
step sweep_unet 150 "$PY" -m pydiffuse.cli bench --sweep unet --quick --device "$DEVICE"

# report.md: from the step outputs kept in $TMP.
printf '%s\n' "${SUMMARY[@]}" >"$TMP/summary"
TMP=$TMP OUT=$OUT DEVICE=$DEVICE TOTAL=$((SECONDS - START)) timeout 30 "$PY" - <<'EOF' >>"$LOG" 2>&1
import datetime, os, pathlib, re, subprocess

tmp, out = pathlib.Path(os.environ["TMP"]), pathlib.Path(os.environ["OUT"])
def read(name):
    p = tmp / f"{name}.out"
    return p.read_text(errors="replace").strip() if p.exists() else ""
def block(text):
    return "```\n" + (text or "(no output)") + "\n```\n"

card = "no GPU (dry run on the CPU)"
if os.environ["DEVICE"] == "cuda":
    try:
        card = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip() or card
    except Exception as err:
        card = f"nvidia-smi failed: {err}"
lines = [f"# pydiffuse GPU check: {card}", "",
         f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
         f"- total time: {os.environ['TOTAL']} s", ""]
lines += ["## Versions", "", block(read("versions"))]
lines += ["## Steps", "", "| step | exit | seconds | note |", "| --- | --- | --- | --- |"]
for row in (tmp / "summary").read_text().splitlines():
    lines.append("| " + " | ".join(row.split("|", 3)) + " |")
tests = read("tests").splitlines()
summary = [l for l in tests if re.search(r"\b(passed|failed|error|skipped|no tests ran)\b", l)]
lines += ["", "## Tests", "", block("\n".join(summary[-1:] or tests[-5:]))]
failures = [l for l in tests if l.startswith(("FAILED", "ERROR"))]
if failures:
    lines += [block("\n".join(failures[:20]))]
lines += ["## pydiffuse info", "", block(read("info"))]
for name in ("bench_fp32", "bench_bf16"):
    text = read(name)
    start = text.find("pydiffuse ")  # the table's first line; progress or errors before it
    lines += [f"## {name}", "", block(text[start:] if start >= 0 else text[-3000:])]
lines += ["## UNet, fused vs reference", "", block(read("unet")[-3000:])]
for name, title in (("sweep_shapes", "Step ops in four layouts"),
                    ("sweep_unet", "group_norm and attention at a UNet's shapes"),
                    ("overhead", "Host overhead per call")):
    text = read(name)
    start = text.find("pydiffuse ") if name != "overhead" else text.find("uptime")
    lines += [f"## {title}", "", block(text[start:] if start >= 0 else text[-4000:])]
lines += ["## DDIM loop", "", block(read("ddim"))]
lines += ["## Shipped models on the device", "", block(read("likelihood")[-3000:])]
lines += ["## Sampling benchmark", "", block(read("sampling"))]
(out / "report.md").write_text("\n".join(lines) + "\n")
print("wrote", out / "report.md")
EOF

echo
echo "gpu_check: $((SECONDS - START)) s; steps (name|exit|seconds|note):"
printf '  %s\n' "${SUMMARY[@]}"
echo "files in $OUT:"
ls -la "$OUT"
