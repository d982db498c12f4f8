#!/usr/bin/env bash
# The llama.cpp we build everywhere: llama-cpp-python's source distribution from the package registry, unpacked into
# DEST, with patches/*.patch applied in order. Prints the unpacked tree's path. Reused while the patches are unchanged.
#   bash scripts/llama_source.sh DEST
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/scripts/llama_flags.sh"
dest=$(mkdir -p "$1" && cd "$1" && pwd)
py=${PYTHON:-python3}
tree="$dest/llama_cpp_python-$llama_version"
stamp="$tree/.moondream-cpp-patches"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$patches_sha" ]; then
  tarball="$dest/llama_cpp_python-$llama_version.tar.gz"
  if [ ! -f "$tarball" ]; then
    "$py" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$llama_version" -d "$dest" >&2
  fi
  rm -rf "$tree"
  tar xzf "$tarball" -C "$dest"
  for p in "$root"/patches/*.patch; do
    patch --quiet --forward -p1 -d "$tree" -i "$p" >&2 || { echo "error: $p does not apply to llama-cpp-python $llama_version" >&2; exit 1; }
  done
  # the built package says which of our patches it carries: the runtime turns AMX on only where 0003 is in
  (cd "$root/patches" && ls ./*.patch | sed 's|^\./||') > "$tree/llama_cpp/moondream_cpp_patches.txt"
  echo "$patches_sha" > "$stamp"
fi
echo "$tree"
