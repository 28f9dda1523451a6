#!/usr/bin/env bash
# GPU measurement in one command, on a CUDA machine (budget: 25 minutes on one H100):
#   1. the kernel test grid (tests/kernels: GPU shapes and bf16 switch on by themselves),
#   2. the kernel micro-benchmarks, forward and backward, against eager, torch.compile and SDPA
#      (benchmarks/test_kernels.py, timed with triton.testing.do_bench),
#   3. the runtime end to end (benchmarks/test_gpu_e2e.py: eager, torch.compile, CUDA graphs, --compile),
#   4. this card's peaks (copy-kernel bandwidth, fp16 GEMM) and fisa-vit-b16 at 640 px end to end, with a
#      profile (kernel time against wall time, the heaviest kernels, a CUDA-graph replay),
#   5. benchmarks/results/<date>-<gpu>.md with the device, driver and versions. Commit that file.
# Usage: scripts/gpu-check.sh            (run from anywhere; FISA_GPU_CHECK_WORK=<dir> keeps the raw files;
#        FISA_PYTHON=<interpreter> if fisa-rt is not installed in the `python` on PATH;
#        FISA_GPU_CHECK_MINUTES=<n> under 25 scales every step's limit down, runs the kernel tests on 12
#        pytest-xdist workers (Triton's compiles are CPU-bound) and drops the torch.compile baselines,
#        whose compiles alone take minutes: the report says so)
# Measured on a 16-core H200 machine (2026-11-26): the kernel tests take 105 s on 12 workers and ran out of
# 134 s on 8; peaks, benchmarks without torch.compile and end to end took 3 min. For a 15-minute lease,
# FISA_GPU_CHECK_MINUTES=9 (limits: tests 172 s, benchmarks 162 s, runtime end to end 54 s, end to end and
# profile 64 s each).
# Where the GPU image lacks open_clip and has no network (the lent H200's, 2026-11-26: torch 2.11, Triton 3.6,
# python3 only): here, `pip download --no-deps -d .whl open_clip_torch ftfy wcwidth` (2.3 MB; .whl/ is
# git-ignored), then on the device, carrying .whl, run in the repository (plain -e needs the network to build):
#   python3 -m pip install -q --no-deps .whl/*.whl && python3 -m pip install -q --no-deps --no-build-isolation \
#     --use-pep517 -e . && FISA_PYTHON=python3 FISA_GPU_CHECK_MINUTES=9 FISA_GPU_CHECK_WORK=$OUT/raw \
#     scripts/gpu-check.sh; cp -r benchmarks/results $OUT/
# and commit the new benchmarks/results/<date>-<gpu>.md and the raw files beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${FISA_PYTHON:-python}"
"$py" - <<'PY' || exit 2
import sys
try:
    import torch
except ImportError:
    print(f"gpu-check: {sys.executable} has no torch: activate the venv fisa-rt is installed in, or set FISA_PYTHON",
          file=sys.stderr)
    sys.exit(2)
if not torch.cuda.is_available():
    print("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a GPU machine",
          file=sys.stderr)
    sys.exit(2)
PY
work="${FISA_GPU_CHECK_WORK:-$(mktemp -d)}"
mkdir -p "$work"
start=$SECONDS
status=0
minutes="${FISA_GPU_CHECK_MINUTES:-25}"
parallel=() benches=()
if [ "$minutes" -lt 25 ]; then
  "$py" -c "import xdist" 2>/dev/null && parallel=(-n 12)
  benches=(-k "not compiled")
fi
step() {  # step <seconds> <what> <command...>: a failing or overrunning step is reported, the others still run
  local limit=$(( $1 * minutes / 25 )) what=$2
  shift 2
  echo "gpu-check: $what (at most $limit s)"
  timeout "$limit" "$@" || { echo "gpu-check: $what failed or ran out of time (exit $?)" >&2; status=1; }
}
step 120 "peaks and device" "$py" benchmarks/gpu_report.py peaks --json "$work/peaks.json"
step 480 "kernel tests" "$py" -m pytest tests/kernels -q -p no:cacheprovider "${parallel[@]}" \
  --junitxml "$work/kernels.xml"
step 350 "kernel benchmarks" "$py" -m pytest benchmarks/test_kernels.py --benchmark-only -q -p no:cacheprovider \
  "${benches[@]}" --benchmark-json "$work/kernels.json"
# eager fp32/fp16, torch.compile, fisa-rt's default (CUDA graphs) and --compile, host to host; short mode:
# fisa-vit-b16 without the compiled runs (FISA_GPU_E2E_QUICK)
step 150 "runtime end to end" env FISA_GPU_E2E_OUT="$work" FISA_GPU_E2E_QUICK=$(( minutes < 25 )) \
  "$py" -m pytest benchmarks/test_gpu_e2e.py -q -p no:cacheprovider -x
step 180 "end to end" "$py" benchmarks/gpu_report.py e2e --json "$work/e2e.json"
step 180 "profile" "$py" benchmarks/gpu_report.py profile --json "$work/profile.json"
# kernels 'auto': each fused op's candidates timed under CUDA graphs at fisa-vit-b16's shapes (36 s at 9 minutes)
step 100 "kernel choices" "$py" benchmarks/gpu_report.py choices --json "$work/choices.json"
"$py" benchmarks/gpu_report.py write --peaks "$work/peaks.json" --tests "$work/kernels.xml" \
  --bench "$work/kernels.json" --e2e "$work/e2e.json" --profile "$work/profile.json" --choices "$work/choices.json" \
  --runtime "$work/gpu-e2e.md" \
  --minutes "$(( (SECONDS - start) / 60 ))" ${benches:+--without-compiled} || status=1
echo "gpu-check: raw files in $work"
exit $status
