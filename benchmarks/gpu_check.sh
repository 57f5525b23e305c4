#!/usr/bin/env bash
# Every CUDA path the CPU test suite cannot run, in one table: bash benchmarks/gpu_check.sh [--checks ...]
# Optional real checkpoints: SV3D_CKPT=/path/sv3d_p.safetensors (orbit direction check). Exit 1 if a row FAILs.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec python benchmarks/gpu_check.py "$@"
