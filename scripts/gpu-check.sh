#!/usr/bin/env bash
# GPU measurement in one command, on a CUDA machine (budget: 24 minutes on one H100), most wanted first:
#   1. this card's peaks (copy-kernel bandwidth, fp16 GEMM) and its device, driver and versions,
#   2. the runtime end to end (benchmarks/test_gpu_e2e.py: eager, torch.compile, CUDA graphs, --compile):
#      issue 19's goals,
#   3. each fused op's candidates timed under CUDA graphs at fisa-vit-b16's shapes (what `auto` picks),
#   4. the kernel test grid (tests/kernels: GPU shapes and bf16 switch on by themselves),
#   5. the kernel micro-benchmarks, forward and backward, against eager, torch.compile and SDPA
#      (benchmarks/test_kernels.py, timed with triton.testing.do_bench),
#   6. fisa-vit-b16 at 640 px end to end and a profile (kernel time against wall time, the heaviest kernels, a
#      CUDA-graph replay),
#   7. the report, <date>-<gpu>.md, naming any step that failed or ran out of time. Commit it.
# Usage: scripts/gpu-check.sh            (run from anywhere; FISA_PYTHON=<interpreter> if fisa-rt is not installed
#        in the `python` on PATH; FISA_GPU_CHECK_WORK=<dir> keeps the raw files there;
#        FISA_GPU_CHECK_OUT=<dir> writes the report there (default benchmarks/results/) with the raw files packed
#        beside it as raw.tar.gz: two files, for a machine that returns few;
#        FISA_GPU_CHECK_MINUTES=<n> under 25 scales every step's limit down, runs the kernel tests on 12
#        pytest-xdist workers (Triton's compiles are CPU-bound) and drops the torch.compile baselines,
#        whose compiles alone take minutes: the report says so)
# A step past its limit gets SIGINT, so pytest still writes what it measured, then SIGKILL 15 s later.
# Measured on a 16-core H200 machine (2026-11-26): the kernel tests take 105 s on 12 workers and ran out of
# 134 s on 8; peaks, benchmarks without torch.compile and end to end took 3 min. For a 15-minute lease,
# FISA_GPU_CHECK_MINUTES=9: the limits add up to 510 s (peaks 36, runtime end to end 126, choices 36, tests 144,
# benchmarks 90, end to end and profile 39 each), leaving room for the installs under the 600 s a command gets.
# Where the GPU image lacks open_clip and has no network (the lent H200's, 2026-11-26: torch 2.11, Triton 3.6,
# python3 only): here, `pip download --no-deps -d .whl open_clip_torch ftfy wcwidth` (2.4 MB; .whl/ is
# git-ignored), then on the device, carrying .whl, run in the repository (plain -e needs the network to build):
#   python3 -m pip install -q --no-deps .whl/*.whl && python3 -m pip install -q --no-deps --no-build-isolation \
#     --use-pep517 -e . && FISA_PYTHON=python3 FISA_GPU_CHECK_MINUTES=9 FISA_GPU_CHECK_OUT=$OUT \
#     scripts/gpu-check.sh 2>&1 | tee $OUT/gpu-check.log
# (the device returns at most 8 files: this is three) and commit the report, with raw.tar.gz unpacked beside it.
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
parallel=() benches=() failed=()
if [ "$minutes" -lt 25 ]; then
  "$py" -c "import xdist" 2>/dev/null && parallel=(-n 12)
  benches=(-k "not compiled")
fi
step() {  # step <seconds> <what> <command...>: a failing or overrunning step is reported, the others still run
  local limit=$(( $1 * minutes / 25 )) what=$2
  shift 2
  echo "gpu-check: $what (at most $limit s)"
  timeout -s INT -k 15 "$limit" "$@" || {
    echo "gpu-check: $what failed or ran out of time (exit $?)" >&2; status=1; failed+=(--failed "$what"); }
}
step 100 "peaks and device" "$py" benchmarks/gpu_report.py peaks --json "$work/peaks.json"
# eager fp32/fp16, torch.compile, fisa-rt's default (CUDA graphs) and --compile, host to host; short mode:
# fisa-vit-b16 without the compiled runs (FISA_GPU_E2E_QUICK)
step 350 "runtime end to end" env FISA_GPU_E2E_OUT="$work" FISA_GPU_E2E_QUICK=$(( minutes < 25 )) \
  "$py" -m pytest benchmarks/test_gpu_e2e.py -q -p no:cacheprovider -x
# kernels 'auto': each fused op's candidates timed under CUDA graphs at fisa-vit-b16's shapes (36 s at 9 minutes)
step 100 "kernel choices" "$py" benchmarks/gpu_report.py choices --json "$work/choices.json"
step 400 "kernel tests" "$py" -m pytest tests/kernels -q -p no:cacheprovider "${parallel[@]}" \
  --junitxml "$work/kernels.xml"
step 250 "kernel benchmarks" "$py" -m pytest benchmarks/test_kernels.py --benchmark-only -q -p no:cacheprovider \
  "${benches[@]}" --benchmark-json "$work/kernels.json"
step 110 "end to end" "$py" benchmarks/gpu_report.py e2e --json "$work/e2e.json"
step 110 "profile" "$py" benchmarks/gpu_report.py profile --json "$work/profile.json"
out="${FISA_GPU_CHECK_OUT:-}"
"$py" benchmarks/gpu_report.py write --peaks "$work/peaks.json" --tests "$work/kernels.xml" \
  --bench "$work/kernels.json" --e2e "$work/e2e.json" --profile "$work/profile.json" --choices "$work/choices.json" \
  --runtime "$work/gpu-e2e.md" --minutes "$(( (SECONDS - start) / 60 )).$(( (SECONDS - start) % 60 / 6 ))" \
  ${benches:+--without-compiled} "${failed[@]}" ${out:+--out-dir "$out"} || status=1
if [ -n "$out" ]; then
  tar -C "$work" -czf "$out/raw.tar.gz" . && echo "gpu-check: raw files in $out/raw.tar.gz"
else
  echo "gpu-check: raw files in $work"
fi
exit $status
