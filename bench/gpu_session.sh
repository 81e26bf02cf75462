#!/usr/bin/env bash
# One GPU session's checks: install, the headline benchmarks, the test suite on the GPU. Each stage has a time
# budget (seconds) so the whole run fits a short lease; a stage cut short says so. Results land in
# bench/results/<gpu>/; where $OUT is set (the device tool) the logs and a tarball of the results are copied there.
# Usage: STAGES="warm bench bench-infer tests" bash bench/gpu_session.sh (also: bench-instance, profile, and plan: the static
# prediction of the same step, to commit beside the profile's measurement)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fused-unet-gpu}
STAGES=${STAGES:-"warm bench bench-infer tests"}
WARM_BUDGET=${WARM_BUDGET:-90}
BENCH_BUDGET=${BENCH_BUDGET:-150}
TEST_BUDGET=${TEST_BUDGET:-200}
# Test files in the order they matter (a cut run has run the first); a quick run takes one config per launch.
TEST_ARGS=${TEST_ARGS:-"tests/test_models.py tests/test_norm.py tests/test_instance_group_norm.py tests/test_conv.py tests/test_conv_transpose.py
  tests/test_edges.py tests/test_compile.py tests/test_pool.py tests/test_upsample.py tests/test_nn.py
  tests/test_fusion.py tests/test_swap.py tests/test_interop.py tests/test_long_runs.py tests/test_gradcheck.py
  tests/test_nonfinite.py tests/test_mutations.py tests/test_train.py tests"}
TEST_TUNE=${TEST_TUNE:-0}
BENCH_ARGS=${BENCH_ARGS:-"--contenders fused eager-cl-amp compile --batch-sizes 16 --no-max-batch --warmup 3 --iters 10"}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

stage() { echo; echo "=== $1 ($(date +%T))"; }
stage install
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
fused-unet info

for s in $STAGES; do
  case $s in
    warm)
      # Autotuning compiles its configs one after another: compile them in parallel first (one process per config
      # index, each running one step of the fused contender), so the benchmark's autotuner finds them cached.
      stage "warm the Triton cache (budget ${WARM_BUDGET}s)"
      for k in 0 1 2 3 4 5 6; do
        FUSED_UNET_TUNE=$k timeout "$WARM_BUDGET" fused-unet bench $BENCH_ARGS --contenders fused --warmup 0 \
          --iters 1 --out "/tmp/warm-$k" >"/tmp/warm-$k.log" 2>&1 &
      done
      wait
      grep -h "fused:" /tmp/warm-*.log | sort | uniq -c;;
    bench)
      stage "bench train (budget ${BENCH_BUDGET}s)"
      timeout --signal=INT "$BENCH_BUDGET" fused-unet bench $BENCH_ARGS 2>&1 | tail -25;;
    bench-infer)
      stage "bench infer (budget ${BENCH_BUDGET}s)"
      timeout --signal=INT "$BENCH_BUDGET" fused-unet bench --mode infer $BENCH_ARGS 2>&1 | tail -25;;
    bench-instance)
      stage "bench train, instance norm (budget ${BENCH_BUDGET}s)"
      timeout --signal=INT "$BENCH_BUDGET" fused-unet bench --norm instance $BENCH_ARGS 2>&1 | tail -25;;
    profile)
      stage "profile (budget ${BENCH_BUDGET}s)"
      gpu=$(python3 -c "from fused_unet import benchmark, perf; print(benchmark.default_out_dir(perf.gpu_info('cuda')['name']))")
      mkdir -p "$gpu"
      timeout --signal=INT "$BENCH_BUDGET" fused-unet profile --batch-sizes 8 --json "$gpu/profile-train-512-bf16.json" \
        2>&1 | tail -60;;
    plan)
      stage "plan (budget ${BENCH_BUDGET}s)"
      gpu=$(python3 -c "from fused_unet import benchmark, perf; print(benchmark.default_out_dir(perf.gpu_info('cuda')['name']))")
      mkdir -p "$gpu"
      timeout --signal=INT "$BENCH_BUDGET" fused-unet plan --json "$gpu/plan-train-512-bf16.json" --top 30 2>&1 | tail -35;;
    tests)
      stage "tests (budget ${TEST_BUDGET}s, FUSED_UNET_TUNE=$TEST_TUNE)"
      workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 14" || echo "")
      FUSED_UNET_TUNE=$TEST_TUNE timeout --signal=INT "$TEST_BUDGET" python3 -m pytest -q $workers --timeout 150 \
        -p no:cacheprovider --junitxml="$OUT/tests.xml" --durations=15 $TEST_ARGS 2>&1 | tee "$OUT/tests.log" \
        | grep -v "^DEBUG" | tail -120
      echo "tests exit: ${PIPESTATUS[0]} (124 or 130: cut at the budget)";;
  esac
done
stage pack
tar czf "$OUT/results.tgz" bench/results 2>/dev/null && echo "packed bench/results into \$OUT/results.tgz"
