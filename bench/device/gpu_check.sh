#!/usr/bin/env bash
# The GPU check of issue 35, as one command on a lent GPU machine (H100/H200), from the project root, with .device/
# carried along (prepared here by ../shared/device/prepare.sh):
#   bash bench/device/gpu_check.sh
# It runs the CUDA tests, then `blockdrop bench gpu` on the 2,000-image test subset, and (with time left, unless
# GPU_CHECK_EFFICIENCY=0) `bench efficiency` served on the GPU with CUDA graphs on. Everything lands under $OUT (default
# ./gpu-check-out): versions.txt, cuda-tests.{txt,xml}, bench/gpu.{json,md}, artifacts/*/manifest.json (eval per
# precision), efficiency/. It stays under 8 minutes:
# each stage has a timeout, and a stage that runs out is reported, not waited for.
set -uo pipefail
# shellcheck source=bench/device/common.sh
source "$(dirname "$0")/common.sh" gpu-check-out
mkdir -p "$out/bench"
limit=${GPU_CHECK_SECONDS:-470}

# 1. the CUDA tests (and the CPU equivalence tests beside them), skips listed
stage cuda-tests 150 python3 -m pytest -q -rs -p no:cacheprovider --junitxml="$out/cuda-tests.xml" \
  tests/models/test_engine.py tests/models/test_blockdrop.py tests/training/test_device.py \
  tests/service/test_explain.py tests/service/test_variants.py \
  tests/service/test_worker.py::test_a_worker_forked_from_the_fork_server_runs_its_model_on_the_gpu > "$out/cuda-tests.txt" 2>&1
tail -15 "$out/cuda-tests.txt"

# 2. bench gpu: every pair, batch 1..2048, fp32/bf16/fp16, graphs on; agreement over the 2,000 test images
stage bench-gpu 240 python3 -m cli.main bench gpu --device cuda --data-root "${BLOCKDROP_DATA_ROOT:-}" --min-run-time 0.2 \
  --out "$out/bench" 2>&1 | tee "$out/bench-gpu.log" | tail -30

# 3. accuracy per precision on the GPU, recorded in copies of the BlockDrop artifacts' manifests (metrics.precision);
#    measured on the 2,000-image subset: read them, do not copy them over the shipped manifests
for name in cifar10-resnet32-blockdrop cifar10-resnet110-blockdrop; do
  mkdir -p "$out/artifacts" && cp -r "models/checkpoints/$name" "$out/artifacts/"
  for precision in fp32 bf16 fp16; do
    left=$((limit - SECONDS - 15))
    [ "$left" -lt 20 ] && { echo "== eval-$name-$precision: not run (${left}s left)" | tee -a "$out/stages.txt"; continue; }
    stage "eval-$name-$precision" $((left < 60 ? left : 60)) python3 -m cli.main eval "$out/artifacts/$name" --data-root "${BLOCKDROP_DATA_ROOT:-}" \
      --split test --sweep "" --device cuda --precision "$precision" --record >> "$out/eval.log" 2>&1
  done
  rm -f "$out/artifacts/$name/model.safetensors"  # only the manifest needs to come back
done

# 4. the service on the GPU (graphs on, bf16, the artifact's frequent masks captured at start-up within 30 s a
#    variant), ResNet-110 pair at c=1, 32, 256, if time is left
left=$((limit - SECONDS))
if [ "${GPU_CHECK_EFFICIENCY:-1}" = 1 ] && [ "$left" -gt 60 ] && command -v wrk >/dev/null; then
  ck=models/checkpoints
  stage efficiency $((left - 10)) env BLOCKDROP_CUDA_GRAPHS=true BLOCKDROP_PRECISION=auto \
    BLOCKDROP_CUDA_SIGNATURE_GRAPHS=1024 BLOCKDROP_CUDA_GRAPH_CAPTURE_S=30 python3 -m cli.main bench efficiency \
    --data-root "${BLOCKDROP_DATA_ROOT:-}" --concurrency 1,32,256 --seconds 4 --repeats 1 --model-seconds 0.5 \
    --warmup-seconds 1 --overhead-requests 100 --reference full110 \
    --variant "blockdrop110=$ck/cifar10-resnet110-blockdrop:blockdrop" --variant "full110=$ck/cifar10-resnet110:full" \
    --out "$out/efficiency" > "$out/efficiency.log" 2>&1
else
  echo "== efficiency: not run (GPU_CHECK_EFFICIENCY=${GPU_CHECK_EFFICIENCY:-1}, ${left}s left)" | tee -a "$out/stages.txt"
fi
sed -n "/Issue 35's targets/,\$p" "$out/bench/gpu.md" 2>/dev/null  # what the run met, at a glance
echo "done in ${SECONDS}s; results under $out"
