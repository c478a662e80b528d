#!/usr/bin/env bash
# One lent GPU call (device tool): train on a wall-clock budget (default: the bundled PARSeq), score best/final on
# the selection sets there, and leave best's fp16 weights in $OUT as <16 MiB parts (`cat part.* > file` joins them).
# Runs made with it: the bundled PARSeq (defaults, BUDGET=360) and master-small's rotation fine-tune:
#   CONFIG=bundled-gpu-rotate BUDGET=450 RUN=/tmp/runs/rot EXTRA="--finetune master-small" \
#   EVALS="--data ../shared/data/SVT/train --rotation 0 90 180 270 --orientation tall" bash scripts/gpu_run.sh
# Needs the payload (scripts/gpu_payload.py -> gpu/) and the wheels the machine lacks (.whl/), both carried:
#   run(command="bash scripts/gpu_run.sh", carry=["gpu", ".whl"])
# A device call carries at most 64 MiB, the tracked files included: since the bundled PARSeq (48 MB) the
# repository alone is over it, so move masterocr/weights/parseq.safetensors and crnn-small.safetensors out of the
# tree for the call (and back after); master-small's weights (28 MB) fit beside the payload (~35 MB).
# Overrides go before --finetune in EXTRA (the overrides are one positional list).
# Environment: BUDGET (training seconds, default 400), CONFIG (default bundled-parseq-gpu), EXTRA (overrides),
# EVALS (`eval` arguments for best and final, sets separated by ";"), OUT (results), DRY=1 (this machine: no
# payload unpacking, CPU, the overrides in EXTRA).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-400}; CONFIG=${CONFIG:-bundled-parseq-gpu}; EXTRA=${EXTRA:-}
RUN=${RUN:-/tmp/runs/parseq-gpu}
EVALS=${EVALS:-"--data ../shared/data/IIIT5K/train --holdout 0.5; --data ../shared/data/SVT/train"}
PY=${PY:-python3}; DEVICE=${DEVICE:-$([ -n "${DRY:-}" ] && echo cpu || echo cuda)}  # the evals' device
export PYTHONUNBUFFERED=1
if [ -z "${DRY:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  tar xJf gpu/sys.tar.xz -C / || exit 1
  mkdir -p ../shared && python3 -m zipfile -e gpu/data.zip ../shared/ || exit 1
  nvidia-smi -L; lscpu | grep -E "Model name|^CPU\(s\)"; python3 -c "import torch; print('torch', torch.__version__)"
  python3 -c "import cv2; print('opencv', cv2.__version__)" 2>/dev/null \
    || echo "no OpenCV here: the synthetic renderer falls back to Pillow (the old, slower renderer)"
else
  export PYTHONPATH=$PWD
fi
start=$(date +%s)
$PY -m masterocr.cli.main train --config "$CONFIG" --output "$RUN" train.max_time="$BUDGET" $EXTRA \
  > "$OUT/train.log" 2>&1
echo "train exit $? after $(( $(date +%s) - start )) s"
grep -E "INFO|Error|error" "$OUT/train.log" | grep -v "Validation DataLoader" | tail -40
cp "$RUN/csv/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
for w in best final; do
  f="$RUN/weights/$w.safetensors"
  [ -f "$f" ] || continue
  echo "== $w"
  IFS=';' read -ra sets <<< "$EVALS"
  for args in "${sets[@]}"; do
    # shellcheck disable=SC2086  # each set is a list of words
    $PY -m masterocr.cli.main eval "$f" $args --device "$DEVICE" --no-progress 2>&1 | grep -E "^\||orientation|Rotation"
  done
done
pick="$RUN/weights/best.safetensors"; [ -f "$pick" ] || pick="$RUN/weights/final.safetensors"
[ -f "$pick" ] && sha256sum "$pick" && split -b 15M -d "$pick" "$OUT/$(basename "$pick").part"
ls -la "$OUT"; echo "total $(( $(date +%s) - start )) s"
