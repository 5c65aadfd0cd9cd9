#!/usr/bin/env bash
# On a GPU machine, from the repository root, with .burst/ carried (made by
# scripts/prepare_gpu_burst.py): install the carried wheels and dqcodec, train the shipped
# variable-rate model for MINUTES (default 8) and write the result to OUT (default ./burst-out):
# dq-vr-burst.safetensors and the log. Extra arguments go to `dqcodec burst` (e.g. --batch).
# Then, on the CPU: dqcodec fit-prior, evaluate, compare (docs/training.md).
set -euo pipefail
MINUTES="${MINUTES:-8}"
OUT="${OUT:-burst-out}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
SITE="$(mktemp -d)"
RUN="$(mktemp -d)"
if [ -d .burst/wheels ] && ! python3 -c "import constriction, pytorch_msssim" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .burst/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null
export PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
python3 -m dqcodec.cli burst --data .burst/photos --minutes "$MINUTES" --device "$DEVICE" \
    --run "$RUN" -o "$OUT/dq-vr-burst.safetensors" --force "$@" 2>&1 | tee "$OUT/burst.log"
