#!/usr/bin/env bash
# Kernel experiments against the native build's ggml (bash scripts/build_native.sh first); prints JSON lines and
# writes <machine>.json beside this script.   bash experiments/kernels/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); lib="$root/build/native/bin"; out=$(mktemp -d)
py=${PYTHON:-$root/.venv/bin/python}; [ -x "$py" ] || py=python3
machine=$(cd "$root" && "$py" -m benchmarks.harness)  # the results file's name: this machine's slug
for t in q4k_matvec matvec_chunks; do
  gcc -O3 -march=native -fopenmp "$here/$t.c" -o "$out/$t" -L"$lib" -lggml-cpu -lggml-base -Wl,-rpath,"$lib" -lm
done
# patch 0006's gelu, vectorized for AVX2 and for this CPU, against the scalar loop: every float must agree bit for bit
ggml="$(bash "$root/scripts/llama_source.sh" "$root/build/native/sdist")/vendor/llama.cpp/ggml"
for arch in "-mavx2 -mf16c -mfma -mno-avx512f" "-march=native"; do
  gcc -O2 $arch "$here/gelu_exhaustive.c" -I"$ggml/include" -I"$ggml/src" -I"$ggml/src/ggml-cpu" -o "$out/gelu" -lm
  res=$("$out/gelu"); echo "gelu $arch: $res" >&2  # exits non-zero on a mismatch, and so does this script
done
# patch 0007's q4_K/q6_K dot products against stock's: bit-identical on 2M random rows, and how much faster
dots=$(bash "$here/dot_check.sh" | paste -sd, -)
{ echo '{"dot_0007": ['"$dots"'], "q4k_matvec": ['; for r in 1 2 3; do OMP_NUM_THREADS=2 "$out/q4k_matvec"; [ $r -lt 3 ] && echo ,; done
  echo '], "matvec_chunks_9.4mb": '; "$out/matvec_chunks" 8192; echo ', "matvec_chunks_2.4mb": '; "$out/matvec_chunks" 2048
  echo '}'; } | tee "$out/k.json"
"$py" -c "import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], 'w'), indent=1)" "$out/k.json" "$here/$machine.json"
