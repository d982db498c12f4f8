#!/usr/bin/env bash
# Packs what experiments/cuda/cuda_device.sh needs on a GPU machine without a package registry into .device/ (keep it out
# of git: `echo /.device/ >> .git/info/exclude`): our patched llama.cpp tree without the parts no build here reads
# (docs, models, tests, other backends; ~7 MB), the llama_cpp Python package of the same tree, the gguf and diskcache
# wheels for that machine's Python, and the GPT-2 vocabulary the tests use (tests/vocab.py; from the same sdist).
#   bash experiments/cuda/cuda_pack.sh [PYTHON_VERSION]    # default 3.12
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
tree=$(PYTHON="$py" bash "$root/scripts/llama_source.sh" "$root/build/native/sdist")
dest=$root/.device
mkdir -p "$dest/whl"
v=vendor/llama.cpp
tar czf "$dest/llama-src.tar.gz" -C "$tree" --exclude="$v/docs" --exclude="$v/models" --exclude="$v/media" \
  --exclude="$v/tests" --exclude="$v/benches" --exclude="$v/gguf-py" --exclude="$v/conversion" \
  --exclude="$v/tools/ui/src" --exclude="$v/tools/ui/tests" --exclude="$v/ggml/src/ggml-sycl" \
  --exclude="$v/ggml/src/ggml-vulkan" --exclude="$v/ggml/src/ggml-opencl" --exclude="$v/ggml/src/ggml-hexagon" \
  --exclude="$v/ggml/src/ggml-metal" --exclude="$v/ggml/src/ggml-et" --exclude="$v/ggml/src/ggml-cann" \
  --exclude='*/__pycache__' "$v" llama_cpp
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${1:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$dest/whl" gguf==0.19.0 diskcache
cp "$tree/$v/models/ggml-vocab-gpt-2.gguf" "$dest/"
du -sh "$dest"
