#!/usr/bin/env bash
# The production path against the stock diffusers pipeline, in one process: ShardWorker.make_samples
# end to end at ImageMixer's settings (640 px, 30 steps, guidance 3) over a sweep of the speed
# switches, the stock pipeline at 1 image per call and batched, the DINOv2 ViT-g/14 teacher in bf16,
# the trainer from shards vs in-memory batches (ResNet-50, ViT-S/16, nvjpeg). Prints one JSON.
#
#   bench/gpu.sh [--size tiny|imagemixer] [--batches 8 16 32] [--compile-modes off on cudagraphs] [--json FILE]
#
# --size imagemixer (the default) wants a CUDA GPU; --size tiny runs on a CPU in seconds (the tests
# run it). With a GPU, run the reference anchors in the same call, and keep both JSONs:
#   bench/gpu.sh --size imagemixer --json "$OUT/gpu.json" && python ../shared/bench/anchors_gpu.py
# The interpreter: $PYTHON, else .venv/bin/python when there is one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m pipeline.bench.gpu "$@"
