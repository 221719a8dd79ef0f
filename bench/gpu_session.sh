#!/usr/bin/env bash
# One GPU lease, one script: the `gpu` test tier, stacked-cell throughput on the GPU, and a paper-profile
# slice on offline data (MNIST-1D), each stage under its own time limit so that one stage's failure or
# overrun still leaves the others' figures. Logs land in $OUT (the device tool's folder; ./gpu-session
# elsewhere); bench/README.md holds what the last lease measured.
#
#   bash bench/gpu_session.sh                 # on a CUDA machine
#   DEVICE=cpu SLICE_EPOCHS=1 BENCH="--only mlp --steps 3 --repeats 1" bash bench/gpu_session.sh  # CPU rehearsal
#
# The stages share one deadline (DEADLINE seconds, default 520, inside the device tool's 10-minute command
# limit); a stage that would start with under 20 s left is skipped.
#
# The device machine has PyTorch and Lightning but not vgbench's other needs: wheels of pydantic, mnist1d and
# submitit travel in .whl/ (bash bench/gpu_wheels.sh fetches them; the call carries .whl). W&B is disabled
# there (not installed), so runs are checked through metrics.json, not offline W&B runs.
set -u
OUT=${OUT:-$PWD/gpu-session}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
SLICE_EPOCHS=${SLICE_EPOCHS:-30}
BENCH=${BENCH:---steps 30 --repeats 2}
CASES=${CASES:-resnet,lstm,highway,mlp,small_init,layernorm}  # stacking.py's cases, in this order (the open aims first)
DEADLINE=$(($(date +%s) + ${DEADLINE:-520}))
export PYTHONUNBUFFERED=1 WANDB_SILENT=true WANDB_MODE=disabled CUBLAS_WORKSPACE_CONFIG=:4096:8
if ! python3 -c "import pydantic, mnist1d, submitit" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
WORK=$(mktemp -d /tmp/vgbench-gpu-session.XXXX)

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: its output in $OUT/NAME.log, its tail and time printed
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  if ((DEADLINE - start < limit)); then limit=$((DEADLINE - start)); fi
  if ((limit < 20)); then echo "== $name: skipped, ${limit}s left"; return; fi
  echo "== $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" bash -c '"$@"' stage "$@" >"$OUT/$name.log" 2>&1  # bash -c: stages may be functions
  rc=$?
  echo "== $name: rc $rc in $(($(date +%s) - start)) s"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'lightning', lightning.__version__, 'cpus', __import__('os').cpu_count())"
}

# A slice of the paper profile that needs no download: its MNIST-1D MLP block (10,000 samples, 5 seeds x
# 4 rates per row) at depths 2, 20, 50 for five remedies, on one GPU with 4 workers sharing it.
paper_slice() {
  python3 - "$WORK/slice.yaml" "$SLICE_EPOCHS" "$DEVICE" "${SLICE_THREADS:-}" <<'EOF'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
paper = params["profiles"]["paper"]
block = next(b for b in paper["matrix"] if b["family"] == "mlp" and b["dataset"] == "mnist1d")
block.update(remedies=["small_init", "xavier", "he_relu", "batchnorm", "residual"], depths=[2, 20, 50])
paper.update(matrix=[block], datasets={"mnist1d": paper["datasets"]["mnist1d"]})
paper["training"]["max_epochs"] = int(sys.argv[2])
if sys.argv[4]:
    paper["trainer"]["threads"] = int(sys.argv[4])
if sys.argv[3] == "cpu":
    paper["trainer"].update(accelerator="cpu", threads=1)
    paper["launcher"].update(gpus=[], jobs=2)
params.update(profile="paper", wandb={**params["wandb"], "mode": "disabled"})
yaml.safe_dump(params, open(sys.argv[1], "w"), sort_keys=False)
EOF
  local args=(--params "$WORK/slice.yaml" --data-root "$WORK/data" --results-root "$WORK/results")
  python3 -m vgbench fetch "${args[@]}" mnist1d || return
  local start=$(date +%s)
  timeout -s TERM "${SLICE_TRAIN_SECONDS:-95}" python3 -m vgbench train "${args[@]}" ${SLICE_TRAIN_ARGS:-}
  echo "train: $(($(date +%s) - start)) s wall"
  python3 -m vgbench status "${args[@]}"
  python3 -m vgbench leaderboard --no-wandb "${args[@]}" && cp "$WORK/results/leaderboard.md" "$OUT/slice_leaderboard.md"
  python3 - "$WORK/results" <<'EOF'
import json, pathlib, statistics, sys
rows = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("cells/*/metrics.json")]
for depth in sorted({r["cell"]["depth"] for r in rows}):
    at = [r for r in rows if r["cell"]["depth"] == depth]
    k = at[0]["group"]["size"]
    print(f"depth {depth}: {len(at)} cells, groups of {k}; fit s/cell median "
          f"{statistics.median(r['fit_seconds'] for r in at):.2f}, i.e. "
          f"{statistics.median(1000 * r['fit_seconds'] * k / r['steps'] for r in at):.1f} ms per group step "
          f"({at[0]['steps']} steps), probes {statistics.median(r['probe_overhead_fraction'] for r in at):.3f}, "
          f"torch threads {at[0]['launch']['threads']}")
if rows:
    print(f"environment {rows[0]['environment']}")
EOF
}

export -f environment paper_slice
export WORK DEVICE SLICE_EPOCHS OUT SLICE_THREADS SLICE_TRAIN_ARGS SLICE_TRAIN_SECONDS
# STAGES picks and orders the stages (a second, shorter lease can rerun some). The default is the next
# lease's plan: the gpu tier, the candidate kernel paths (gpu_paths), where an LSTM group's step goes on the
# host (profile_lstm), stacking for the cases in CASES, and the paper slice; stack_identity and stacking_k21
# ran on the first lease, profile_mlp on the second (bench/README.md).
for name in ${STAGES:-environment gpu_tests gpu_paths profile_lstm stacking_k9 paper_slice}; do
  case $name in
    environment) stage environment 60 environment ;;
    gpu_tests) [ "$DEVICE" = cuda ] && TAIL=40 stage gpu_tests 170 python3 -m pytest -m gpu -q -rfE -p no:cacheprovider \
                 tests/test_gpu.py ;;
    stack_identity) stage stack_identity 60 python3 bench/stack_identity.py --device "$DEVICE" ;;
    gpu_paths) TAIL=36 stage gpu_paths 90 python3 bench/gpu_paths.py --device "$DEVICE" ;;
    profile_mlp) TAIL=45 stage profile_mlp 50 python3 bench/profile_group.py --profile paper --device "$DEVICE" \
                   --row mlp-he_relu-mnist1d-d20 --epochs "${PROFILE_EPOCHS:-3}" --threads 4 --data-root "$WORK/data" ;;
    profile_lstm) TAIL=45 stage profile_lstm 40 python3 bench/profile_group.py --device "$DEVICE" \
                    --row rnn-lstm-adding-d50 --epochs 1 --data-root "$WORK/bench-data" ;;
    # shellcheck disable=SC2086  # BENCH is a list of options
    stacking_k9) stage stacking_k9 150 python3 bench/stacking.py --device "$DEVICE" $BENCH --only "$CASES" \
                   --data-root "$WORK/bench-data" ;;
    paper_slice) TAIL=40 stage paper_slice 130 paper_slice ;;
    stacking_k21) stage stacking_k21 120 python3 bench/stacking.py --device "$DEVICE" --seeds 7 $BENCH \
                    --data-root "$WORK/bench-data" ;;
    *) echo "unknown stage $name" ;;
  esac
done
