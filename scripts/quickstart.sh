#!/usr/bin/env bash
# The main job on the bundled default: fine-tune a teacher and a student on synth-sum, evaluate both.
# Runs land in ${XKD_RUNS_DIR:-./runs}; a second run reuses finished runs instead of retraining.
set -euo pipefail
cd "$(dirname "$0")/.."
XKD=.venv/bin/xkd
TASK=${TASK:-synth-sum}
for role in teacher student; do
  model=$([ "$role" = teacher ] && echo tiny-t5-large || echo tiny-t5-small)
  if [ ! -f "${XKD_RUNS_DIR:-runs}/$TASK/$role/model/model.safetensors" ]; then
    echo "+ xkd sft --recipe recipes/sft-$model-$TASK.yaml --name $role" >&2
    $XKD sft --recipe "recipes/sft-$model-$TASK.yaml" --name "$role" --overwrite
  fi
done
for role in teacher student; do
  echo "+ xkd eval --model $role --task $TASK" >&2
  $XKD eval --model "$role" --task "$TASK"
done
