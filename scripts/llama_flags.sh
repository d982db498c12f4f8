# Sourced by install.sh and build_native.sh: the compiler and flags every llama.cpp build of ours uses, in one place.
llama_version=0.3.36
# our changes to that llama.cpp (patches/README.md says what each does and why); part of every build's identity
patches_sha=$(cat "$(dirname "${BASH_SOURCE[0]}")"/../patches/*.patch | sha1sum | cut -c1-12)
cflags=${CFLAGS:-}
cmake_args=${CMAKE_ARGS:-}
# On a CPU with Intel AMX, clang when it is installed: its build of ggml's AMX and VNNI kernels runs prefill and
# decode ~1.17x faster than GCC 12's here (docs/performance.md). clang spells the AMX feature macros __AMXINT8__,
# ggml tests GCC's __AMX_INT8__, so name them. GCC 12 builds AMX safely only with patches/0003.
# MOONDREAM_CPP_CC=gcc (or any compiler) overrides the choice.
cc=${MOONDREAM_CPP_CC:-}
if [ -z "$cc" ] && [ "$(uname -m)" = x86_64 ] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && command -v clang >/dev/null \
   && command -v clang++ >/dev/null; then
  cc=clang
fi
if [ "$cc" = clang ]; then
  export CC=clang CXX=clang++
  grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && cflags="$cflags -D__AMX_TILE__=1 -D__AMX_INT8__=1"
elif [ -n "$cc" ]; then
  export CC="$cc"
  case "$cc" in gcc*) export CXX="g++${cc#gcc}" ;; clang*) export CXX="clang++${cc#clang}" ;; esac
fi
compiler="${CC:-cc} ($("${CC:-cc}" -dumpversion 2>/dev/null || echo unknown))"
