#!/usr/bin/env bash
# Install moondream-cpp (editable) with a llama.cpp build that works on this machine, our patches applied.
#   bash scripts/install.sh            # runtime only
#   bash scripts/install.sh test,torch # plus test tools and the PyTorch reference
# Installs into the active virtual environment, else into .venv/ in the checkout (made if missing).
# Your own CMAKE_ARGS (e.g. -DGGML_CUDA=on, -DGGML_METAL=on) are passed through to llama.cpp's build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  [ -x "$root/.venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$root/.venv"
  py="$root/.venv/bin/python"
fi
. "$root/scripts/llama_flags.sh"

# pip's own wheel cache ignores build flags, so keep our builds in a folder keyed by them.
key=$(printf '%s|%s|%s|%s|%s|%s' "$llama_version" "$patches_sha" "$compiler" "$cflags" "$cmake_args" "$(uname -m)" \
  | sha1sum | cut -c1-12)
wheels=${MOONDREAM_CPP_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/moondream-cpp/wheels}/$key
wheel=$(ls "$wheels"/llama_cpp_python-$llama_version-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "Building llama-cpp-python $llama_version (about 5 minutes on 2 cores; once per build flags)" >&2
  echo "  compiler $compiler, CFLAGS='$cflags' CMAKE_ARGS='$cmake_args'" >&2
  mkdir -p "$wheels"
  src=$(PYTHON="$py" bash "$root/scripts/llama_source.sh" "$wheels/src")
  CFLAGS="$cflags" CXXFLAGS="$cflags" CMAKE_ARGS="$cmake_args" \
    "$py" -m pip wheel --no-deps --no-cache-dir -w "$wheels" "$src"
  # llama.cpp's GPT-2 vocabulary test file, which the tests build their tokenizers from (tests/vocab.py)
  cp "$src/vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf" "$(dirname "$wheels")/"
  rm -rf "$wheels/src"
  wheel=$(ls "$wheels"/llama_cpp_python-$llama_version-*.whl | head -n1)
fi
"$py" -m pip install --quiet --no-deps --force-reinstall "$wheel"
# the reference model's torch: the CPU build (a plain `pip install torch` may pull gigabytes of CUDA libraries)
case ",$extras," in *,torch,*) "$py" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}" ;; esac
"$py" -m pip install --quiet -e "$root${extras:+[$extras]}"
# the official moondream client, for the server's compatibility tests: its cloud client needs only pillow (its
# declared dependency, the Photon runtime, is a GPU stack we do not want)
case ",$extras," in *,test,*) "$py" -m pip install --quiet --no-deps "moondream==2.6.1" ;; esac
echo "installed into $(dirname "$py") (llama.cpp: $("$py" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())'))" >&2
