#!/usr/bin/env bash
# The recipe's GPU steps in one call of the lent machine (device tool): the default model and
# the architecture sweep, side by side on one GPU, then the held-out evaluation of the default
# model. Needs train/data (npm run train:prepare) carried along. What a caller brings back:
# default/state.pt, */log.json, sweep/sweep.json (the sweep's weights stay behind).
#   bash train/gpu-run.sh OUT_DIR
set -u
out=${1:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c 'import torch; print("torch", torch.__version__)'
python3 train/train.py --preset default --tokens ${DEFAULT_TOKENS:-24e6} --out "$out/default" --eval-every 200 --max-seconds ${DEFAULT_SECONDS:-420} > "$out/default.txt" 2>&1 &
python3 train/sweep.py --out "$out/sweep" --parallel ${PARALLEL:-5} --max-seconds ${SWEEP_SECONDS:-420}
wait
tail -2 "$out/default.txt"
python3 train/evaluate.py "$out/default/state.pt" --json "$out/default/eval.json" | grep -E '"(loss|ppl)"'
