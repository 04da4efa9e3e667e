#!/usr/bin/env bash
# Here, before a device session: pack into .gpu/ (ignored by git, < 64 MiB) what
# scripts/gpu_check.sh needs on the GPU machine, which has no network:
#   .gpu/llama_cpp_python-<pin>.tar.gz  the pinned sdist without llama.cpp's models/docs/tests
#                                       and other backends' sources (76 MB → about 5 MB)
#   .gpu/home/llama.cpp/<pin>/          toolkit's converter (convert_hf_to_gguf.py, conversion/, gguf-py/)
#   .gpu/llama3-tokenizer/              Llama-3's tokenizer, from llama.cpp's ggml-vocab-llama-bpe.gguf
#   .gpu/wheels/                        pure-Python dependencies the GPU image lacks
# Then: device run `bash scripts/gpu_check.sh` with carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
G=.gpu
mkdir -p "$G/wheels"

"$PY" - <<'EOF'
import shutil, tarfile
from pathlib import Path
from toolkit import vendor, versions

conv = vendor.require()
sdist = vendor.download_sdist(vendor.cache_root() / "sdist")  # verified against the pinned sha256
top = vendor.SDIST_NAME.removesuffix(".tar.gz")
drop = [f"{top}/vendor/llama.cpp/{d}" for d in (
    "models", "docs", "tests", "examples", "benches", "media", "tools/ui", "tools/server/public",
    "ggml/src/ggml-vulkan", "ggml/src/ggml-sycl", "ggml/src/ggml-opencl", "ggml/src/ggml-hexagon",
    "ggml/src/ggml-metal", "ggml/src/ggml-webgpu", "ggml/src/ggml-et", "ggml/src/ggml-openvino",
    "ggml/src/ggml-cann", "ggml/src/ggml-zdnn", "ggml/src/ggml-kompute", "tools/mtmd/test-3.mp4")]
drop += [f"{top}/.git", f"{top}/examples", f"{top}/docs"]  # git history of the sdist, llama-cpp-python's own examples
out = Path(".gpu") / vendor.SDIST_NAME
if not out.is_file():
    with tarfile.open(sdist) as src, tarfile.open(out.with_suffix(".partial"), "w:gz") as dst:
        for m in src.getmembers():
            if not any(m.name == d or m.name.startswith(d + "/") for d in drop):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    out.with_suffix(".partial").rename(out)
home = Path(".gpu/home/llama.cpp") / versions.LLAMA_CPP_PYTHON
if not home.is_dir():
    shutil.copytree(conv.root, home, ignore=lambda d, names: ["models"] if Path(d) == conv.root else [])
print(f"sdist {out.stat().st_size / 2**20:.1f} MiB, converter {home}")
EOF

if [ ! -f "$G/llama3-tokenizer/tokenizer.json.gz" ]; then
  "$PY" - <<'EOF'
import json
from pathlib import Path
from transformers import AutoTokenizer
from toolkit import vendor

conv = vendor.require()
tok = AutoTokenizer.from_pretrained(conv.vocabs, gguf_file="ggml-vocab-llama-bpe.gguf")
tok.chat_template = (conv.templates / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
tok.save_pretrained(".gpu/llama3-tokenizer")
# The class name transformers 4.x knows too: the GPU image's transformers may be older than ours.
cfg = Path(".gpu/llama3-tokenizer/tokenizer_config.json")
d = json.loads(cfg.read_text())
d["tokenizer_class"] = "PreTrainedTokenizerFast"
for k in ("backend", "is_local", "local_files_only"):
    d.pop(k, None)
cfg.write_text(json.dumps(d, indent=2, ensure_ascii=False))
print(f"tokenizer: {len(tok)} tokens")
EOF
  gzip -kf "$G/llama3-tokenizer/tokenizer.json" && rm "$G/llama3-tokenizer/tokenizer.json"
fi

# llama-cpp-python imports diskcache; the GPU image has everything else toolkit needs.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$G/wheels" diskcache==5.6.3
du -sh "$G"
