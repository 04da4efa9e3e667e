#!/usr/bin/env bash
# CUDA's root as nvcc itself reports it: the nvcc on PATH may be a wrapper script elsewhere
# (/usr/local/bin/nvcc on some images), so its own path does not tell. Exit 1 without nvcc.
command -v nvcc >/dev/null || exit 1
top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
readlink -f "${top:-$(dirname "$(readlink -f "$(command -v nvcc)")")/..}"
