#!/usr/bin/env bash
# Everything the GPU issue asks for, in one command on a bare GPU machine (no network):
#   build, the test suite with CUDA tensors and compiled Triton kernels (the whole-step
#   CUDA-graph captures in tests/test_cuda_graph_step.py included), the full `mtl-fast bench`
#   on the GPU and the structured-head benchmark. Results land in benchmarks/results/ (and are
#   copied to $OUT when that is set, as on the lent device machine).
#
#   benchmarks/gpu_check.sh              # all of it
#   STEPS="test" benchmarks/gpu_check.sh # a subset: any of build test bench structured
#
# Peers absent from the machine (torchjd==0.18.0, qpsolvers, quadprog) are installed from
# wheels in .whl/ when that folder exists (see /work/.library/device/README.md); without them
# the torchjd columns read n/a.
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-"build test bench structured"}
PY=${PYTHON:-python3}
LOG=${OUT:-benchmarks/results}/gpu_check.log
mkdir -p "$(dirname "$LOG")"
export PYTHONUNBUFFERED=1
status=0
stamp=$(mktemp)

has() { [[ " $STEPS " == *" $1 "* ]]; }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if has build; then
    "$PY" -m pip install -q --no-build-isolation --no-deps -e . || exit 1
  fi
  if has test; then
    "$PY" -m pytest -q -p no:cacheprovider tests --maxfail=20 || status=1
  fi
  if has bench; then
    "$PY" -m mtl_fast.cli bench --device cuda --out benchmarks/results || status=1
  fi
  if has structured; then
    "$PY" benchmarks/bench_structured.py --tier full --device cuda --out benchmarks/results || status=1
  fi
  if [ -n "${OUT:-}" ]; then
    # only what this run wrote (the device tool returns at most 8 files)
    find benchmarks/results -maxdepth 1 -type f -newer "$stamp" ! -name gpu_check.log \
      -exec cp {} "$OUT"/ \;
  fi
  exit $status
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
