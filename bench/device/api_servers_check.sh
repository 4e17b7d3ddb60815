#!/usr/bin/env bash
# The scaling check of issue 36, as one command on a lent machine with many cores and a GPU, from the project root,
# with .device/ carried along (prepared here by ../shared/device/prepare.sh):
#   bash bench/device/api_servers_check.sh
# It serves the ResNet-32 pair (full, blockdrop) on the GPU with 1, 4 and 8 API servers in turns (`bench efficiency
# --api-servers 1,4,8`, c=1, 32, 256) while nvidia-smi samples how busy the GPU is every 200 ms. Results under $OUT
# (default ./api-servers-out): efficiency/efficiency.{json,md}, gpu-busy.csv, stages.txt. Not yet run on such a
# machine. It stays under 8 minutes: the stage has a timeout, and one that runs out is reported, not waited for.
set -uo pipefail
# shellcheck source=bench/device/common.sh
source "$(dirname "$0")/common.sh" api-servers-out
limit=${API_SERVERS_CHECK_SECONDS:-450}
command -v wrk >/dev/null || { echo "wrk is missing (prepare.sh puts it in .device/)"; exit 2; }

busy_pid=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits -lms 200 > "$out/gpu-busy.csv" &
  busy_pid=$!
fi
ck=models/checkpoints
stage efficiency "$limit" python3 -m cli.main bench efficiency --data-root "${BLOCKDROP_DATA_ROOT:-}" \
  --api-servers 1,4,8 --concurrency 1,32,256 --seconds 5 --repeats 2 --model-seconds 0.5 --warmup-seconds 1 \
  --overhead-requests 50 --variant "full=$ck/cifar10-resnet32:full" \
  --variant "blockdrop=$ck/cifar10-resnet32-blockdrop:blockdrop" --out "$out/efficiency" > "$out/efficiency.log" 2>&1
[ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null
if [ -s "$out/gpu-busy.csv" ]; then  # the mean over the samples taken while the service was loaded
  awk -F', ' '$2 > 0 {s += $2; n++} END {if (n) printf "GPU busy: mean %.0f %% over %d non-idle samples\n", s / n, n}' \
    "$out/gpu-busy.csv" | tee -a "$out/stages.txt"
fi
tail -30 "$out/efficiency/efficiency.md" 2>/dev/null
echo "done in ${SECONDS}s; results under $out"
