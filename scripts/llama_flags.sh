# Sourced by install.sh and build_native.sh: the compiler flags every llama.cpp build of ours uses, in one place.
# GCC <= 12 miscompiles ggml's AMX tile-config setup (the first quantized matmul segfaults, llama.cpp #20824),
# and -march=native turns AMX on wherever the CPU has it: switch AMX off for those compilers only.
llama_version=0.3.36
# our changes to that llama.cpp (patches/README.md says what each does and why); part of every build's identity
patches_sha=$(cat "$(dirname "${BASH_SOURCE[0]}")"/../patches/*.patch | sha1sum | cut -c1-12)
cflags=${CFLAGS:-}
if [ "$(uname -m)" = x86_64 ] && command -v gcc >/dev/null; then
  gcc_major=$(gcc -dumpversion | cut -d. -f1)
  if [ "$gcc_major" -le 12 ]; then
    cflags="$cflags -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
fi
cmake_args=${CMAKE_ARGS:-}
