#!/usr/bin/env bash
# The GPU check, one prepared script for the lent device machine (no network there; what it
# needs comes in .gpu/, made here by scripts/gpu_prepare.sh):
#
#   1. build llama-cpp-python with CUDA (sm_90) from the pinned sdist, as scripts/setup.sh does,
#      or unpack the runtime scripts/gpu_prebuild.sh built beforehand
#   2. an HF checkpoint of Llama-3-8B's shape: random bf16 weights, Llama-3's real tokenizer
#   3. toolkit quantize --q4_k_m (BF16 intermediate kept)
#   4. toolkit infer on 504 questions (the samples × 63), every layer on the GPU
#   5. --n-gpu-layers auto with --vram-limit 6 on the 15 GiB BF16 file (must stay under 6 GiB)
#   6. toolkit bench at --parallel 1, 4, 16
#   7. llama.cpp's own llama-bench on the Q4_K_M file, built in step 1's build tree
#   8. a context bigger than the GPU: one line naming what did not fit, exit 2
#
# device run:  bash scripts/gpu_check.sh          carry [".gpu"], timeout 600; figures in $OUT
# a rehearsal here, on the CPU, with a 4-layer model:  TINY=1 PY=.venv/bin/python bash scripts/gpu_check.sh
#
# Each step is skipped when its result is already in $WORK, so a rerun on the still-warm machine
# goes on where a timeout stopped it ($OUT is a new empty folder on every device call: the
# figures so far are copied back into it). STEPS="build model quantize infer auto bench llamabench oom" picks steps.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check}
STEPS=${STEPS:-build model quantize infer auto bench llamabench oom}
TINY=${TINY:-}
SHAPE=${SHAPE:-$([ -n "$TINY" ] && echo tiny || echo llama3-8b)}  # SHAPE=tiny on the GPU: a quick smoke run
NEW_TOKENS=${NEW_TOKENS:-$([ -n "$TINY" ] && echo 16 || echo 64)}
TIMES=${TIMES:-$([ -n "$TINY" ] && echo 2 || echo 63)}  # the 8 sample questions this many times over
BENCH_REPEAT=${BENCH_REPEAT:-$([ -n "$TINY" ] && echo 1 || echo 4)}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
# Results live in $WORK; $OUT gets a copy of each as it is made (and all earlier ones on a rerun).
keep() { [ "$WORK" = "$OUT" ] || cp "$WORK/$1" "$OUT/$1" 2>/dev/null || true; }
rm -f "$WORK/vram.pid"  # a killed earlier run's watcher id: never kill what now has that pid
for f in figures.txt infer.summary.json auto.summary.json bench.json llama-bench.md; do keep "$f"; done
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 COLUMNS=160  # a crash in llama.cpp shows the Python stack

step() { [[ " $STEPS " == *" $1 "* ]]; }
clock() { date +%s.%N; }
took() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(clock)"; }
record() { echo "$1=$2" >> "$WORK/figures.txt"; keep figures.txt; echo "## $1 = $2"; }
# llama.cpp's own buffers on the GPU (weights + KV + compute, MiB) from an infer --json summary.
gpu_buffers() { "$PY" -c "
import json, sys
m = json.load(open(sys.argv[1])).get('memory_mib', {})
print(round(sum(v for name, kinds in m.items() if name.startswith('CUDA') and 'Host' not in name for v in kinds.values()), 1), m)
" "$1"; }

# GPU memory in use, sampled every 0.2 s while a step runs; the peak goes into figures.txt.
vram_watch() {
  command -v nvidia-smi >/dev/null || return 0
  (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done) > "$WORK/vram.$1" 2>/dev/null &
  echo $! > "$WORK/vram.pid"
}
trap '[ -f "$WORK/vram.pid" ] && kill "$(cat "$WORK/vram.pid")" 2>/dev/null' EXIT  # a failed step leaves no watcher
vram_peak() {
  [ -f "$WORK/vram.pid" ] || return 0
  kill "$(cat "$WORK/vram.pid")" 2>/dev/null; rm -f "$WORK/vram.pid"
  record "$1_peak_vram_mib" "$(sort -n "$WORK/vram.$1" | tail -1)"
}

echo "# gpu_check $(date -u +%FT%TZ) shape=$SHAPE"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
nproc
"$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"

# Pure-Python dependencies the image lacks, and (step 1) the runtime, go to a target dir.
SITE=${SITE:-/tmp/site}
if [ -z "$TINY" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .gpu/wheels/*.whl || exit 1
  export PYTHONPATH="$SITE:$REPO"
  export TOOLKIT_HOME="$REPO/.gpu/home"
fi
TK=("$PY" -m toolkit)
# The CUDA libraries llama.cpp links (libcudart, libcublas): the image's pip packages (nvidia/cu13/lib,
# torch's own, first: LD_LIBRARY_PATH outranks torch's RUNPATH), then the toolkit's.
if [ -z "$TINY" ]; then
  CUDA_LIBS=$("$PY" - <<'EOF'
import glob, os, site
dirs = [d for base in site.getsitepackages() for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))]
dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
print(":".join(dict.fromkeys(d for d in dirs if glob.glob(os.path.join(d, "libcu*.so.*")))))
EOF
)
  export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "CUDA libraries from: $CUDA_LIBS"
fi

# Step 1 runs in the background while step 2 draws the checkpoint on the GPU (no llama_cpp needed).
# The sdist is unpacked to $WORK/src and built in $WORK/skbuild with llama.cpp's tools on, so step 7
# finds llama-bench there: reconfiguring that tree later would recompile ggml-cuda.
SRC="$WORK/src"
BUILD="$WORK/skbuild"
BUILD_PID=
gpu_runtime() { "$PY" -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" 2>/dev/null; }
# A CUDA runtime from the same sdist, built beforehand by scripts/gpu_prebuild.sh (in .gpu/;
# PROVENANCE inside says how): saves the ~5 min build. NO_PREBUILT=1 builds anyway.
PREBUILT=$(ls .gpu/llama_cpp_cuda_sm*-*.tar.xz 2>/dev/null | head -1)
if step build && [ -z "$TINY" ] && [ -n "$PREBUILT" ] && [ -z "${NO_PREBUILT:-}" ] && ! gpu_runtime; then
  echo "== 1. CUDA runtime from $PREBUILT (no build)"
  t0=$(clock)
  mkdir -p "$SITE" "$WORK/pysrc"
  tar xzf .gpu/llama_cpp_python-*.tar.gz -C "$WORK/pysrc" --strip-components=1 --wildcards '*/llama_cpp/*'
  rm -rf "$SITE/llama_cpp" && cp -r "$WORK/pysrc/llama_cpp" "$SITE/llama_cpp"
  tar xJf "$PREBUILT" -C "$SITE/llama_cpp"
  mkdir -p "$SITE/llama_cpp_python-0.3.36.dist-info"
  printf 'Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.36\n' > "$SITE/llama_cpp_python-0.3.36.dist-info/METADATA"
  if gpu_runtime; then
    record cuda_runtime "prebuilt $(basename "$PREBUILT"), unpacked in $(took "$t0") s"
    head -8 "$SITE/llama_cpp/PROVENANCE"
  else
    echo "the prebuilt runtime does not load here: building"
    "$PY" -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" 2>&1 | tail -3
    rm -rf "$SITE/llama_cpp" "$SITE/llama_cpp_python-0.3.36.dist-info"
  fi
fi
if step build && [ -z "$TINY" ] && ! gpu_runtime; then
  echo "== 1. build llama-cpp-python with CUDA (log: build.log)"
  [ -d "$SRC" ] || { mkdir -p "$SRC" && tar xzf .gpu/llama_cpp_python-*.tar.gz -C "$SRC" --strip-components=1; }
  # The flags scripts/setup.sh uses when it finds nvcc, with this card's architecture;
  # no build isolation: the image has scikit-build-core, cmake and ninja, and no network.
  (
    t0=$(clock)
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90} -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$PY" -m pip install --no-index --no-deps --no-build-isolation --target "$SITE" \
      -C build-dir="$BUILD" "$SRC" > "$OUT/build.log" 2>&1 || { echo "build failed"; tail -40 "$OUT/build.log"; exit 1; }
    record cuda_build_seconds "$(took "$t0")"
  ) &
  BUILD_PID=$!
fi

CKPT="$WORK/Llama-3-8B-shaped"
[ "$SHAPE" = tiny ] && CKPT="$WORK/Llama-3-tiny-shaped"
if step model && [ ! -f "$CKPT/config.json" ]; then
  echo "== 2. checkpoint ($SHAPE, random weights)"
  t0=$(clock)
  TOK="$WORK/llama3-tokenizer"
  mkdir -p "$TOK" && cp .gpu/llama3-tokenizer/*.json* .gpu/llama3-tokenizer/*.jinja "$TOK"/ 2>/dev/null
  [ -f "$TOK/tokenizer.json" ] || gunzip -f "$TOK/tokenizer.json.gz"
  DEV=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
  "$PY" scripts/make_random_checkpoint.py --shape "$SHAPE" --tokenizer "$TOK" --out "$CKPT" --device "$DEV" || exit 1
  record checkpoint_seconds "$(took "$t0")"
fi

if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID" || exit 1
fi
"${TK[@]}" doctor || exit 1

MODELS="$WORK/models"
NAME=$(basename "$CKPT")
Q4="$MODELS/$NAME/$NAME-Q4_K_M.gguf"
BF16="$MODELS/$NAME/$NAME-BF16.gguf"
if step quantize && [ ! -f "$Q4" ]; then
  echo "== 3. toolkit quantize --q4_k_m"
  t0=$(clock)
  if "${TK[@]}" quantize "$CKPT" --q4_k_m --keep-intermediate --no-check --output-dir "$MODELS"; then
    record quantize_total_seconds "$(took "$t0")"
  else
    # Measure the rest anyway: llama.cpp's own quantizer from the same build, on the kept BF16 file.
    record toolkit_quantize "failed (exit $?)"
    [ -f "$BF16" ] || exit 1
    LQ="$BUILD/bin/llama-quantize"
    if [ ! -x "$LQ" ]; then  # the prebuilt runtime has no tools: a CPU-only llama-quantize, about a minute
      [ -d "$SRC" ] || { mkdir -p "$SRC" && tar xzf .gpu/llama_cpp_python-*.tar.gz -C "$SRC" --strip-components=1; }
      cmake -S "$SRC/vendor/llama.cpp" -B "$WORK/qbuild" -G Ninja -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF >/dev/null \
        && cmake --build "$WORK/qbuild" --target llama-quantize -j "$(nproc)" >/dev/null || exit 1
      LQ="$WORK/qbuild/bin/llama-quantize"
    fi
    t0=$(clock)
    "$LQ" "$BF16" "$Q4.partial" Q4_K_M "$(nproc)" > "$OUT/llama-quantize.log" 2>&1 || exit 1
    mv "$Q4.partial" "$Q4"
    record llama_quantize_fallback_seconds "$(took "$t0")"
  fi
  [ -f "$MODELS/$NAME/manifest.json" ] && "$PY" - "$MODELS/$NAME/manifest.json" >> "$WORK/figures.txt" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for t, f in m["files"].items():
    print(f"{t}_seconds={f['seconds']}\n{t}_size_bytes={f['size']}\n{t}_bits_per_weight={f['bits_per_weight']}")
EOF
  keep figures.txt
  "${TK[@]}" inspect "$Q4"
fi

N=$((8 * TIMES))
QUESTIONS="$WORK/questions$N.json"
"$PY" -c "
from pathlib import Path
from toolkit import samples
from toolkit.bench import repeated
p = repeated(samples.samples_path(), $TIMES, Path('$WORK'))
Path(p).rename('$QUESTIONS')
" || exit 1

if step infer && [ ! -f "$WORK/infer$N.json" ]; then
  echo "== 4. toolkit infer: $N questions, every layer on the GPU, $NEW_TOKENS new tokens"
  vram_watch infer
  t0=$(clock)
  "${TK[@]}" infer "$QUESTIONS" --model "$Q4" --output "$WORK/infer$N.json.partial" --max-new-tokens "$NEW_TOKENS" --json \
    | tee "$WORK/infer.summary.json.partial" || exit 1
  mv "$WORK/infer.summary.json.partial" "$WORK/infer.summary.json" && keep infer.summary.json
  mv "$WORK/infer$N.json.partial" "$WORK/infer$N.json"
  record "infer${N}_wall_seconds" "$(took "$t0")"
  vram_peak infer
  record infer_llama_cpp_gpu_buffers_mib "$(gpu_buffers "$WORK/infer.summary.json")"
fi

if step auto && [ ! -f "$WORK/auto.summary.json" ]; then
  echo "== 5. --n-gpu-layers auto --vram-limit 6 on the BF16 file"
  "$PY" -c "
import json
from toolkit import samples
items = json.load(open(samples.samples_path()))
json.dump(items, open('$WORK/questions8.json', 'w'), ensure_ascii=False)
"
  "${TK[@]}" doctor --model "$BF16" --vram 6 --parallel 4 --n-ctx 1024
  vram_watch auto
  t0=$(clock)
  "${TK[@]}" infer "$WORK/questions8.json" --model "$BF16" --output "$WORK/auto8.json" --n-gpu-layers auto \
    --vram-limit 6 --parallel 4 --max-new-tokens 16 --no-resume --json | tee "$WORK/auto.summary.json.partial" || exit 1
  mv "$WORK/auto.summary.json.partial" "$WORK/auto.summary.json" && keep auto.summary.json
  record auto_wall_seconds "$(took "$t0")"
  vram_peak auto
  # The acceptance line: what llama.cpp allocated on the GPU stays under the 6 GiB (6144 MiB) cap.
  record auto_llama_cpp_gpu_buffers_mib "$(gpu_buffers "$WORK/auto.summary.json")"
fi

if step bench && [ ! -f "$WORK/bench.json" ]; then
  echo "== 6. toolkit bench --parallel 1/4/16 ($((8 * BENCH_REPEAT)) questions, $NEW_TOKENS new tokens)"
  "${TK[@]}" bench "$Q4" --repeat "$BENCH_REPEAT" --parallel 1 --parallel 4 --parallel 16 --max-new-tokens "$NEW_TOKENS" --json \
    > "$WORK/bench.json.partial" || exit 1
  mv "$WORK/bench.json.partial" "$WORK/bench.json" && keep bench.json && cat "$WORK/bench.json"
fi

# llama.cpp's own llama-bench from the same source, same file: the yardstick for bench's figures.
LB="$BUILD/bin/llama-bench"
LBB="$BUILD/bin/llama-batched-bench"
if [ ! -x "$LB" ] && [ -x "$SITE/llama_cpp/bin/llama-bench" ]; then  # the prebuilt runtime's tools
  LB="$SITE/llama_cpp/bin/llama-bench" LBB="$SITE/llama_cpp/bin/llama-batched-bench"
  export LD_LIBRARY_PATH="$SITE/llama_cpp/lib:$LD_LIBRARY_PATH"
fi
if step llamabench && [ -z "$TINY" ] && [ ! -x "$LB" ]; then
  record llama_bench "skipped: no llama-bench (neither in a build tree nor in the prebuilt runtime)"
elif step llamabench && [ -z "$TINY" ] && [ ! -f "$WORK/llama-bench.md" ]; then
  echo "== 7. llama-bench (llama.cpp's yardstick: same commit, same build, same file)"
  "$LB" -m "$Q4" -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md | tee "$WORK/llama-bench.md.partial" || exit 1
  # and its batched counterpart: prompts of 128 tokens, 64 new tokens, 1/4/16 sequences at once
  "$LBB" -m "$Q4" -ngl 99 -fa on -c 4096 -npp 128 -ntg 64 -npl 1,4,16 2>/dev/null \
    | grep "^|" | tee -a "$WORK/llama-bench.md.partial" || exit 1
  mv "$WORK/llama-bench.md.partial" "$WORK/llama-bench.md" && keep llama-bench.md
fi

# A KV cache bigger than the card (1.5M cells of Llama-3-8B: 183 GiB; H100 80, H200 141; TINY: 95 GiB of RAM): llama.cpp's
# CUDA allocation fails, and infer must say so in one line, exit 2, naming CUDA0 and the MiB.
if step oom && ! grep -q "^oom_exit=" "$WORK/figures.txt" 2>/dev/null; then
  echo "== 8. a context that does not fit the GPU"
  OOM_CTX=${OOM_CTX:-$([ "$SHAPE" = tiny ] && echo 50000000 || echo 1500000)}
  "${TK[@]}" infer "$QUESTIONS" --model "$Q4" --output "$WORK/oom.json" --n-ctx "$OOM_CTX" --parallel 1 \
    2> "$WORK/oom.err"
  record oom_exit "$?"
  record oom_message "$(tail -1 "$WORK/oom.err")"
fi

echo "== figures"
cat "$WORK/figures.txt"
