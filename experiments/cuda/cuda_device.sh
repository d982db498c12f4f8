#!/usr/bin/env bash
# moondream-cpp on an NVIDIA GPU machine that has CUDA, cmake and python3 (with torch) but no package registry:
# builds our llama.cpp (the sources llama-cpp-python 0.3.36 vendors, patches/ applied) with CUDA once, for the
# Python runtime (through LLAMA_CPP_LIB_PATH) and the native tools alike, then measures (cuda_bench.py)
# and runs the fidelity tests on the GPU. What it needs from outside travels in .device/ (made by
# experiments/cuda/cuda_pack.sh on a machine with a package registry):
#   llama-src.tar.gz   vendor/llama.cpp and the llama_cpp Python package of the patched sdist tree
#   whl/*.whl          gguf and diskcache (the Python packages the GPU machine lacks)
#   ggml-vocab-gpt-2.gguf   the tests' GPT-2 vocabulary (tests/vocab.py), from the sdist
#
#   bash experiments/cuda/cuda_device.sh build    # unpack, build (CUDA, this GPU's architecture), f16 models meanwhile
#   bash experiments/cuda/cuda_device.sh bench    # quantize, measure, GPU fidelity tests; results in $OUT (or /tmp/out)
#   bash experiments/cuda/cuda_device.sh diagnose # the libraries only (no flash-attention kernels: ~4 min),
#       then which call before llama_model_load_from_file makes it crash (experiments/notebook.md, "CUDA")
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out}
mkdir -p "$out"
src=build/cuda-src
# the installed moondream_cpp, not the source folder in the working directory (whose cli/ and convert/ install as
# its subpackages)
export PYTHONPATH=/tmp/site:$PWD/$src PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
export LLAMA_CPP_LIB_PATH=$PWD/build/cuda/bin MTMD_CPP_LIB=$PWD/build/cuda/bin
export MOONDREAM_CPP_TEST_VOCAB=$PWD/.device/ggml-vocab-gpt-2.gguf  # no package index there to fetch it from
command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin

setup() {
  mkdir -p "$src"
  tar xzf .device/llama-src.tar.gz -C "$src"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation . 2>&1 | tail -3
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  nvcc --version | tail -2
}

build() {
  local t0=$SECONDS
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_SOURCE="$PWD/$src/vendor/llama.cpp" \
    -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native >"$out/build.log" 2>&1 &&
  cmake --build build/cuda --target native -j "$(nproc)" >>"$out/build.log" 2>&1
  local rc=$?
  echo "CUDA build: exit $rc in $((SECONDS - t0)) s"
  tail -5 "$out/build.log"
  return $rc
}

# 2026-12-04, H200, CUDA 13.0: Moondream.load segfaulted inside llama_model_load_from_file (llama_model::print_info,
# frames in libggml-cuda.so) while a bare load through llama_cpp did not. Each line adds one of the calls our load
# makes first; the first that dies names the culprit.
diagnose() {
  local t0=$SECONDS T=gguf_models/demo/moondream-demo-text-f16.gguf M=gguf_models/demo/moondream-demo-mmproj-f16.gguf
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_SOURCE="$PWD/$src/vendor/llama.cpp" -DGGML_CUDA=on \
    -DGGML_CUDA_FA=OFF -DCMAKE_CUDA_ARCHITECTURES=native >"$out/build.log" 2>&1 &&
    cmake --build build/cuda --target llama mtmd -j "$(nproc)" >>"$out/build.log" 2>&1 || { tail "$out/build.log"; return 1; }
  echo "libraries built in $((SECONDS - t0)) s"
  local pre='from moondream_cpp.native import llama, mtmd; L = llama(); p = L.llama_model_default_params()'
  local load="m = L.llama_model_load_from_file(b'$T', p); print('loaded' if m else 'load failed')"
  for step in "pass" "mtmd()" "L.llama_print_system_info()" "L.llama_supports_gpu_offload()" \
              "p.use_extra_bufts = False" "p.n_gpu_layers = 999; p.load_mode = -1" \
              "import numpy, PIL.Image, yaml" "import gguf" \
              "mtmd(); L.llama_print_system_info(); L.llama_supports_gpu_offload(); p.use_extra_bufts = False"; do
    printf '%-100s ' "$step"
    timeout 60 python3 -c "$pre; $step; $load" 2>&1 | tail -1
  done
  # our runtime imports gguf, and gguf imports sentencepiece and mistral_common where they are installed: does that
  # pull in a second CUDA or C++ runtime (torch loads its CUDA libraries RTLD_GLOBAL) before libggml-cuda binds?
  python3 -c "import sys, gguf; print('import gguf brings in:', sorted(m for m in ('torch', 'sentencepiece', \
    'mistral_common', 'transformers', 'tiktoken') if m in sys.modules)); print('\n'.join(sorted({l.split()[-1] \
    for l in open('/proc/self/maps') if any(k in l for k in ('cuda', 'cublas', 'stdc++', 'torch'))})))" 2>&1 | head -20
  printf '%-100s ' "Moondream.load"
  timeout 60 python3 -c "from moondream_cpp import Moondream; Moondream.load('$T', '$M'); print('loaded')" 2>&1 | tail -1
  timeout 60 cuda-gdb -q -batch -ex run -ex bt --args python3 -c \
    "from moondream_cpp import Moondream; Moondream.load('$T', '$M')" 2>&1 | grep -a '^#[0-9] ' | cut -c1-240 | head -12
  # the backtrace ran libstdc++'s ostream code inside libggml-cuda.so: does that library carry (and export) its own
  # copy, and which copy does libllama's call bind to in the crashing process and in a bare load?
  echo "libstdc++ symbols exported by libggml-cuda: $(nm -D --defined-only build/cuda/bin/libggml-cuda.so | grep -c '_ZNS[aot]')"
  readelf -d build/cuda/bin/libllama.so build/cuda/bin/libggml.so | grep -E 'File|NEEDED'
  for what in "import llama_cpp as L; L.llama_backend_init(); p = L.llama_model_default_params(); $load" \
              "from moondream_cpp import Moondream; Moondream.load('$T', '$M')"; do
    LD_DEBUG=bindings LD_DEBUG_OUTPUT=/tmp/bind timeout 60 python3 -c "$what" >/dev/null 2>&1
    echo "${what:0:40}... binds libllama's ostream calls to:"  # libstdc++.so.6 alone is the sane answer
    cat /tmp/bind.* | grep -a 'file [^ ]*libllama.so .*_ZNSo' | sed 's/.* to \([^ ]*\) .*/\1/' | sort | uniq -c
    rm -f /tmp/bind.*
  done
}

case "${1:-all}" in
  build)
    setup
    python3 experiments/cuda/cuda_bench.py --models-only-f16 >"$out/models.log" 2>&1 &
    build
    wait
    tail -3 "$out/models.log"
    ls build/cuda/bin ;;
  bench)
    python3 experiments/cuda/cuda_bench.py --out "$out/cuda.json" 2>"$out/bench.log" | tail -c 3000
    tail -5 "$out/bench.log"
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_fidelity.py tests/test_quantized.py \
      tests/test_prefix_cache.py 2>&1 | tee "$out/tests.log" | tail -15 ;;
  diagnose)
    setup
    diagnose ;;
  all)
    setup
    python3 experiments/cuda/cuda_bench.py --models-only-f16 >"$out/models.log" 2>&1 &
    build
    wait
    "$0" bench ;;
esac
