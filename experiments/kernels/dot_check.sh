#!/usr/bin/env bash
# Patch 0007's q4_K/q6_K dot products against stock's: x86/quants.c of the unpatched sdist and of our tree, each
# compiled on its own, for this CPU (its VNNI path where it has one) and for plain AVX2 (the fallback), called side by
# side by dot_ab.c. Prints one JSON line per type and flag set; exits non-zero on any mismatch.
#   bash experiments/kernels/dot_check.sh     (after bash scripts/build_native.sh; DOT_AB_SPEED=0: bit-identity only)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); lib="$root/build/native/bin"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
ggml="$(bash "$root/scripts/llama_source.sh" "$root/build/native/sdist")/vendor/llama.cpp/ggml"
tar xzf "$root"/build/native/sdist/llama_cpp_python-*.tar.gz -C "$out" --wildcards '*/vendor/llama.cpp/ggml/*'
stock=$(echo "$out"/llama_cpp_python-*/vendor/llama.cpp/ggml)
gcc -O2 -march=native -fopenmp "$here/dot_ab.c" -o "$out/dot_ab" -ldl
for arch in "-march=native" "-mavx2 -mfma -mf16c -mbmi2 -mno-avx512f -mno-avxvnni"; do
  for side in stock ours; do
    g=$ggml; [ $side = stock ] && g=$stock
    # shellcheck disable=SC2086
    gcc -O3 $arch -shared -fPIC -I"$g/include" -I"$g/src" -I"$g/src/ggml-cpu" "$g/src/ggml-cpu/arch/x86/quants.c" \
      -o "$out/lib$side.so" -L"$lib" -lggml-cpu -lggml-base
  done
  for t in q4_K q6_K; do
    res=$(LD_LIBRARY_PATH="$lib" "$out/dot_ab" "$out/libstock.so" "$out/libours.so" $t)
    echo "{\"flags\": \"$arch\", \"result\": $res}"
  done
done
