#!/usr/bin/env bash
# The bench's own measurement (moondream_cpp.bench.measure, q4_k_m + q8_0 mmproj, 2 threads) in fresh processes,
# this checkout against an older tree, turn about with the order alternating. Prints one JSON line per run.
#   bash experiments/runtime-split-ab/ab.sh OLD_TREE WORK_DIR [PAIRS]
# OLD_TREE: `git archive REV | tar x -C OLD_TREE`, with convert/, cli/ and gguf_models/ linked into its
# moondream_cpp/ (ln -s ../convert OLD_TREE/moondream_cpp/convert ...) so it imports as one package;
# WORK_DIR: a `moondream-cpp bench --work` folder (its gguf/ and photo.png).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
old=$1 work=$2 pairs=${3:-10}
text=$(ls "$work"/gguf/*text-q4_k_m.gguf) mmproj=$(ls "$work"/gguf/*mmproj-q8_0.gguf)
for i in $(seq "$pairs"); do
  order="new old"; [ $((i % 2)) = 0 ] && order="old new"
  for side in $order; do
    tree=$root; [ "$side" = old ] && tree=$old
    echo "$side $(cd /tmp && PYTHONPATH=$tree "$root/.venv/bin/python" -m moondream_cpp.bench.measure --text "$text" \
      --mmproj "$mmproj" --image "$work/photo.png" --threads 2 2>/dev/null | tail -1)"
  done
done
