#!/usr/bin/env bash
# GPU check of sv3d.training (not run on the CPU-only project machine). From the repository root:
#   bash benchmarks/gpu_check_sv3d_training.sh            # OUT=/tmp/sv3d_gpu_check by default
# 1. tiny random SVD-xt -> svd_mv, 3 steps, bf16 autocast on one GPU (checkpointing per layer and per block);
# 2. the same through DeepSpeed ZeRO-2 and ZeRO-3 (one process) when `deepspeed` is importable;
# 3. the full-size step benchmark at 576x576, 7 and 21 frames (bf16; ZeRO-2 when DeepSpeed is there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT/extensions/sv3d:$ROOT/extensions/mvdream:${PYTHONPATH:-}"
OUT=${OUT:-/tmp/sv3d_gpu_check}
CFG="$ROOT/extensions/sv3d/accelerate_config"
mkdir -p "$OUT"
python - "$OUT" <<'PY'
import os, sys
from sv3d.tiny import write_tiny_checkpoint
from sv3d.training.dummy_data import write_svd_meta_dataset
out = sys.argv[1]
if not os.path.exists(f"{out}/tiny_svd_xt.safetensors"):
    write_tiny_checkpoint(f"{out}/tiny_svd_xt.safetensors", "svd_xt", seed=0)
if not os.path.exists(f"{out}/data"):
    write_svd_meta_dataset(f"{out}/data", 2, 8, 64)
PY
ARGS=(pretrained="$OUT/tiny_svd_xt.safetensors" data.root="$OUT/data" data.resolution=64 data.num_frames=7 max_steps=3 progress_bar=false)
for gran in layer block; do
  rm -rf "$OUT/run_bf16_$gran"
  accelerate launch --num_processes 1 --mixed_precision bf16 -m sv3d.train "${ARGS[@]}" \
    checkpointing_granularity=$gran output_dir="$OUT/run_bf16_$gran"
done
if python -c "import deepspeed" 2>/dev/null; then
  for cfg in deepspeed_zero_2_one_gpu deepspeed_zero_3; do
    rm -rf "$OUT/run_$cfg"
    accelerate launch --config_file "$CFG/$cfg.yaml" --num_processes 1 -m sv3d.train "${ARGS[@]}" output_dir="$OUT/run_$cfg"
    python -c "from sv3d import SV3DPipeline; SV3DPipeline.from_single_file('$OUT/run_$cfg/export/step_0000003/model.safetensors'); print('$cfg export loads')"
  done
  accelerate launch --config_file "$CFG/deepspeed_zero_2_one_gpu.yaml" "$ROOT/benchmarks/bench_sv3d_train_step.py" \
    --size full --latents 72 --frames 7 21 --repeats 3 | tee "$OUT/bench_zero2.md"
else
  echo "deepspeed not importable: DeepSpeed runs skipped"
  accelerate launch --num_processes 1 --mixed_precision bf16 "$ROOT/benchmarks/bench_sv3d_train_step.py" \
    --size full --latents 72 --frames 7 21 --repeats 3 | tee "$OUT/bench_bf16.md"
fi
python "$ROOT/benchmarks/bench_sv3d_train_step.py" --plan | tee "$OUT/plan.md"
