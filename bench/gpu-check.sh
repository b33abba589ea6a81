#!/usr/bin/env bash
# One command on a CUDA 12 machine: install onnxruntime-node's CUDA provider, prove that CUDA
# loads on the engine's I/O-binding path (KV cache in device memory, no cache byte copied per
# step), run the whole test suite on CUDA, and write the engine table — stories15m,
# stories110m and llama-1b shapes, batch 1–64, tokens/s, step ms and KV bytes copied per step,
# for the I/O-binding path and onnxruntime-node's JavaScript session side by side — plus
# Hugging Face transformers' batched `generate` on the same shapes where Python has torch
# (with CUDA) and transformers. Any failure stops it with a non-zero exit.
#
#   bash bench/gpu-check.sh                 # results in bench/gpu/
#
# Settings (environment): GPU_CHECK_OUT (bench/gpu), GPU_CHECK_MODELS
# (stories15m,stories110m,llama-1b), GPU_CHECK_BATCHES (1,2,4,8,16,32,64), GPU_CHECK_STEPS
# (32), GPU_CHECK_PROMPT (tokens each sequence holds when decoding starts; default 128),
# GPU_CHECK_SKIP_INSTALL=1 (already installed with the CUDA provider, e.g. in Dockerfile.gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${GPU_CHECK_OUT:-bench/gpu}"
models="${GPU_CHECK_MODELS:-stories15m,stories110m,llama-1b}"
batches="${GPU_CHECK_BATCHES:-1,2,4,8,16,32,64}"
steps="${GPU_CHECK_STEPS:-32}"
prompt="${GPU_CHECK_PROMPT:-128}"
mkdir -p "$out"
say() { echo "gpu-check: $*" >&2; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
  say "nvidia-smi does not answer: this is not a GPU machine"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"

if [[ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]]; then
  say "1/5 npm ci with onnxruntime-node's CUDA 12 provider (the addon must build)"
  # The environment variable overrides .npmrc's onnxruntime-node-install=skip.
  ONNXRUNTIME_NODE_INSTALL=cuda12 MARGINAL_REQUIRE_NATIVE=1 npm ci 2>&1 | tee "$out/install.log"
fi

say "2/5 CUDA on the I/O-binding path and on onnxruntime-node's session"
MARGINAL_PROVIDERS=cuda node --import tsx bench/gpu/probe.ts 2>&1 | tee "$out/probe.txt"

say "3/5 the test suite on CUDA (MARGINAL_PROVIDERS=cuda: an engine that cannot open CUDA fails its test)"
# With ../shared (the real stories260K model) next to the checkout, CI=true makes its exactness
# tests mandatory; without it they skip, and the log says so.
ci=false
if [[ -d ../shared/models/stories260K ]]; then ci=true; else say "../shared not found: the stories260K exactness tests will skip"; fi
MARGINAL_PROVIDERS=cuda CI=$ci npm test 2>&1 | tee "$out/test.log"

say "4/5 the engine table"
npm run -s bench:engine -- --providers cuda --models "$models" --batches "$batches" --steps "$steps" \
  --prompt "$prompt" --modes fast,fast-js --json "$out/engine.json" | tee "$out/engine.md"

say "5/5 Hugging Face transformers' batched generate on the same shapes"
if python3 -c 'import sys, torch, transformers; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  python3 bench/gpu/hf_generate.py --models "$models" --batches "$batches" --steps "$steps" --prompt "$prompt" \
    --json "$out/hf.json" | tee "$out/hf.md"
else
  echo "skipped: no python3 with torch (CUDA) and transformers" | tee "$out/hf.md"
fi
say "done: $out/ (gpu.csv, probe.txt, test.log, engine.md/json, hf.md/json)"
