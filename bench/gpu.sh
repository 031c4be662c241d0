#!/usr/bin/env bash
# The device check, sized to one lease: sections as separate processes, most informative first,
# each result appended to a JSON-lines file the moment it is measured, a time budget that stops
# starting sections that cannot finish. Sections, estimates and what to carry to the GPU machine:
# the header of pipeline/bench/gpu.py (about 6.7 min on one H100; default budget 470 s).
#
#   bench/gpu.sh [--size tiny|imagemixer] [--budget SECONDS] [--sections NAME ...] [--out FILE.jsonl]
#
# --size imagemixer (the default) wants a CUDA GPU; --size tiny runs on a CPU (the tests run it).
# The reference anchors run as their own section when shared/bench/anchors_gpu.py is there.
# The interpreter: $PYTHON, else .venv/bin/python when there is one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m pipeline.bench.gpu "$@"
