#!/usr/bin/env bash
# One prepared device check (run on a lent GPU machine from the repository root, with the image's
# python3 holding torch): the CUDA tests (eager and compiled, bf16 autocast), the transformer benchmark
# on the GPU, the CLI on CUDA and a one-process NCCL torchrun. Logs go to $OUT (or ./gpu_out).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=ci
step() { echo "=== $1"; shift; local t0=$SECONDS; "$@"; echo "=== rc=$? in $((SECONDS - t0)) s"; }
step "machine" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc;
  python3 -c "import sys, torch, numpy, scipy; print(sys.version.split()[0], torch.__version__, numpy.__version__, scipy.__version__, torch.cuda.get_device_name(0))"'
step "CUDA tests" timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_transformer_train.py
step "bench_transformer on CUDA" timeout 200 python3 benchmarks/bench_transformer.py --device cuda \
  --out "$OUT/bench_transformer_cuda.json"
step "CLI on CUDA (bf16 autocast), default task" timeout 90 python3 -m spo_tabular.cli transformer --device cuda --json \
  --log-interval 0
step "torchrun, one NCCL rank" timeout 90 python3 -m torch.distributed.run --standalone --nproc_per_node=1 \
  -m spo_tabular.cli transformer --device cuda --steps 200 --json --log-interval 0
