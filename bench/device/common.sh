# What every device check does first; a check sources it with the name of its default results folder:
#   source "$(dirname "$0")/common.sh" gpu-check-out
# It sets $out ($OUT on the device machine, else ./NAME), enters the prepared .device/ environment, puts the project
# on PYTHONPATH, writes versions.txt (cores, GPU, torch, commit), and defines `stage`.
out="${OUT:-$PWD/$1}"
mkdir -p "$out"
# shellcheck disable=SC1091
[ -f .device/on-device.sh ] && source .device/on-device.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "cores $(nproc)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
  git log -1 --format='commit %H %s' 2>/dev/null || true
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, note how it ended in stages.txt
  local name=$1 seconds=$2; shift 2
  local started=$SECONDS
  echo "== $name (at most ${seconds}s)"
  timeout --kill-after=10 "$seconds" "$@"
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - started))s" | tee -a "$out/stages.txt"
}
