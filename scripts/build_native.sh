#!/usr/bin/env bash
# Build llama.cpp's native tools (llama-bench, llama-batched-bench, llama-mtmd-cli, llama-server, llama-quantize)
# from the llama.cpp that llama-cpp-python vendors, with the same flags as scripts/install.sh. Tools land in
# build/native/bin.
#   bash scripts/build_native.sh                      # CPU
#   CMAKE_ARGS="-DGGML_CUDA=on" bash scripts/build_native.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/llama_flags.sh"
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
build="$root/build/native"
# cmake from the system, else from the package registry (scikit-build-core does the same for llama-cpp-python)
if ! command -v cmake >/dev/null; then
  "$py" -m pip install --quiet cmake
  PATH="$(dirname "$py"):$PATH"
fi
# shellcheck disable=SC2086
CFLAGS="$cflags" CXXFLAGS="$cflags" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$py" $cmake_args >/dev/null
cmake --build "$build" --target native -j "$(nproc 2>/dev/null || echo 2)"
ls "$build/bin"/llama-bench "$build/bin"/llama-batched-bench "$build/bin"/llama-mtmd-cli "$build/bin"/llama-server "$build/bin"/llama-quantize
