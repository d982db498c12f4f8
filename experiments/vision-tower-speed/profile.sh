#!/usr/bin/env bash
# Where one mmproj's vision tower spends its time: `perf record` over encode_loop.py (N crops after the load), then
# the samples by symbol. LIB is a llama.cpp library folder (libllama.so, libmtmd.so, libggml*.so), "" the installed one.
#   bash experiments/vision-tower-speed/profile.sh MMPROJ [LIB] [N]   # -> the top symbols on stdout
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mmproj=$1 lib=${2:-} n=${3:-2}
data=$(mktemp /tmp/vision-perf.XXXXXX)
env ${lib:+LLAMA_CPP_LIB_PATH=$lib MTMD_CPP_LIB=$lib} perf record -q -F 499 -o "$data" \
  "$root/.venv/bin/python" "$here/encode_loop.py" "$mmproj" "$n"
# the sample count (at 499 Hz: CPU-seconds x 499, all threads), then the symbols
perf report -i "$data" --no-children --sort symbol --percent-limit 0.3 2>/dev/null | grep -v '^$' \
  | grep -v '^# \(Overhead\|\.\|$\|To display\|Total Lost\|Event count\)' | grep -v '^#$' | cut -c1-150
rm -f "$data"
