#!/usr/bin/env bash
# The GPU checks in two bounded tiers, each one command on a bare GPU machine (no network):
#
#   benchmarks/gpu_check.sh quick   # ≤ 6 min: build, kernel tuning sweep (its table is used by
#                                   # everything after it in the run), the CUDA test subset
#                                   # (kernels, split, ops, backward, MultiTaskLinear, whole-step
#                                   # CUDA-graph captures), `mtl-fast bench --quick` ops on CUDA
#   benchmarks/gpu_check.sh full    # ≤ 8.5 min: build, the Gram tuning sweep (unless a table
#                                   # is carried), the whole test suite on CUDA, the GPU benchmark
#                                   # tier, the MultiTaskLinear benchmark (T up to 4096), the
#                                   # training-step profile (eager vs CUDA graph, host operators)
#
#   DEVICE=cpu benchmarks/gpu_check.sh quick   # dry run on a machine without a GPU: the same
#                                              # steps at smoke sizes, kernels in the interpreter
#
# Each step runs under its own time limit, so a tier ends in bounded time whatever happens; a
# failing step is reported and the next one still runs. Results go to benchmarks/results/ and,
# when $OUT is set (the lent device machine), at most 8 files are copied there: the log, the
# test report (JUnit XML), the tuning JSON and table, the benchmark JSON/Markdown/PNG.
#
# Environment: RESULTS_DIR (where results are written), KERNEL_TABLE (a tuned table JSON to use instead of tuning: `full` reads the one
# the quick tier wrote when it is carried along), TESTS (override the test selection), PYTHON,
# JOBS (pytest-xdist workers when xdist is installed, default 8).
# Peers absent from the machine (torchjd==0.18.0, qpsolvers, quadprog) are installed from
# wheels in .whl/ when that folder exists; without them the torchjd columns read n/a.
set -uo pipefail
cd "$(dirname "$0")/.."
TIER=${1:-quick}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
JOBS=${JOBS:-12}
# Results go to benchmarks/results/ on a GPU; a CPU dry run writes to a temporary folder
# (RESULTS_DIR overrides both).
if [ "$DEVICE" = cpu ]; then RESULTS=${RESULTS_DIR:-$(mktemp -d)}; else RESULTS=${RESULTS_DIR:-benchmarks/results}; fi
LOG=${OUT:-$RESULTS}/gpu_check-$TIER.log
mkdir -p "$(dirname "$LOG")" "$RESULTS"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$HOME/.triton/cache}
# Carried from an earlier tier (ignored by git): .gpu/triton-cache.tgz (compiled kernels of the
# same machine image) and .gpu/kernel-table.json (the tuning sweep's table).
CARRY=.gpu
stamp=$(mktemp)
failed=()

# run NAME SECONDS CMD...: one step under a time limit; a failure is recorded, not fatal.
run() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@"
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  [ $rc -eq 0 ] || failed+=("$name(rc=$rc)")
  return $rc
}

case $TIER in
  quick)
    TESTS=${TESTS:-"tests/kernels tests/test_split.py tests/test_ops.py tests/test_backward.py tests/test_multitask_linear.py tests/test_cuda_graph_step.py tests/test_cuda_compile_amp.py"}
    ;;
  full)
    TESTS=${TESTS:-tests}
    ;;
  *)
    echo "usage: $0 quick|full" >&2
    exit 2
    ;;
esac

{
  echo "gpu_check $TIER on $(hostname) at $(date -u +%FT%TZ), commit ${MTL_FAST_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}"
  if [ "$DEVICE" = cpu ]; then
    export TRITON_INTERPRET=1
    BENCH_TIER=smoke
    QUICK_BENCH=(--tier smoke)
    TUNE_ARGS=(--device cpu --workers 2)
    STRUCT_TIER=smoke
  else
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
    BENCH_TIER=gpu
    QUICK_BENCH=(--quick)
    TUNE_ARGS=()
    STRUCT_TIER=gpu
  fi
  "$PY" -c "import sys, torch, triton, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -f "$CARRY/triton-cache.tgz" ] && [ "$DEVICE" != cpu ]; then
    mkdir -p "$TRITON_CACHE_DIR" && tar xzf "$CARRY/triton-cache.tgz" -C "$TRITON_CACHE_DIR" \
      && echo "Triton cache: $(find "$TRITON_CACHE_DIR" -name '*.json' | wc -l) entries restored"
  fi
  if [ -z "${KERNEL_TABLE:-}" ] && [ -f "$CARRY/kernel-table.json" ]; then
    KERNEL_TABLE=$PWD/$CARRY/kernel-table.json
  fi
  run build 180 "$PY" -m pip install -q --no-build-isolation --no-deps -e . || exit 1
  XDIST=()
  if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "$JOBS"); fi

  if [ "$TIER" = quick ]; then
    if [ -z "${KERNEL_TABLE:-}" ]; then
      run tune 150 "$PY" benchmarks/tune_kernels.py "${TUNE_ARGS[@]}" --out "$RESULTS" \
        --table "$RESULTS/kernel-table.json"
      # A sweep cut short by its limit still writes the table of the cases it measured.
      [ "$RESULTS/kernel-table.json" -nt "$stamp" ] && KERNEL_TABLE=$(realpath "$RESULTS/kernel-table.json")
    fi
    [ -n "${KERNEL_TABLE:-}" ] && [ "$DEVICE" != cpu ] && export MTL_FAST_KERNEL_TABLE=$KERNEL_TABLE
    # shellcheck disable=SC2086
    run tests 170 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" --timeout 160 \
      --junitxml="$RESULTS/junit-$TIER.xml" -o junit_logging=no $TESTS
    # `mtl-fast bench` ≡ the harness of this checkout (not in the wheel installed above).
    run bench 60 "$PY" -m benchmarks.harness "${QUICK_BENCH[@]}" --device "$DEVICE" --only ops \
      --out "$RESULTS" --no-plot
    if [ "$DEVICE" != cpu ] && [ -d "$TRITON_CACHE_DIR" ]; then
      # The compiled kernels, for the next tier on a fresh machine (kept only when ≤ 15 MiB).
      tar czf "$RESULTS/triton-cache.tgz" -C "$TRITON_CACHE_DIR" . \
        && size=$(stat -c %s "$RESULTS/triton-cache.tgz") && echo "Triton cache: $size bytes" \
        && [ "$size" -le 15728640 ] || rm -f "$RESULTS/triton-cache.tgz"
    fi
  else
    if [ -z "${KERNEL_TABLE:-}" ]; then
      run tune 75 "$PY" benchmarks/tune_kernels.py "${TUNE_ARGS[@]}" --only gram --budget 50 \
        --out "$RESULTS" --table "$RESULTS/kernel-table.json"
      [ "$RESULTS/kernel-table.json" -nt "$stamp" ] && KERNEL_TABLE=$(realpath "$RESULTS/kernel-table.json")
    fi
    if [ -n "${KERNEL_TABLE:-}" ] && [ "$DEVICE" != cpu ]; then
      export MTL_FAST_KERNEL_TABLE=$KERNEL_TABLE
    fi
    # shellcheck disable=SC2086
    run tests 160 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" --timeout 120 \
      --junitxml="$RESULTS/junit-$TIER.xml" -o junit_logging=no $TESTS
    run bench 150 "$PY" -m benchmarks.harness --tier "$BENCH_TIER" --device "$DEVICE" \
      --time-limit 125 --out "$RESULTS"
    run structured 50 "$PY" benchmarks/bench_structured.py --tier "$STRUCT_TIER" \
      --device "$DEVICE" --time-limit 35 --out "$RESULTS"
    # Where a training step's time goes: eager vs CUDA-graph replay, host operators.
    run profile 45 "$PY" benchmarks/profile_step.py --device "$DEVICE" --tier "$BENCH_TIER" \
      --T 10 --reps 10 --out "$RESULTS"
  fi

  if [ -n "${OUT:-}" ]; then
    # Only what this run wrote, at most 8 files: no PNGs (re-rendered from the JSON), no table
    # (the tuning JSON holds it as "proposed_table")
    find "$RESULTS" -maxdepth 1 -type f -newer "$stamp" ! -name "gpu_check-*.log" ! -name "*.png" \
      ! -name kernel-table.json \
      | head -n 7 | xargs -r -I{} cp {} "$OUT"/
  fi
  echo "gpu_check $TIER done in ${SECONDS}s; failed steps: ${failed[*]:-none}"
  [ ${#failed[@]} -eq 0 ]
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
