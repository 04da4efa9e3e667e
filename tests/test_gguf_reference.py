"""toolkit/gguf.py checked against llama.cpp's own gguf-py, of the commit the converter is taken from.

We keep our own header reader for speed (see its docstring); these tests stop it drifting from
the reference: the ggml type table, the value-type codes and the metadata key names come out of
gguf-py's constants, and every model the suite has is opened by both readers, which must agree
on everything toolkit reads from a header.

gguf-py comes from the provisioned converter (vendor.Converter.gguf_py), never from a
pip-installed `gguf` (transformers' dependency, possibly another version). Its GGUFReader is slow
on large vocabularies (seconds per file): each file is opened by it once.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit import convert, embedded, fit, gguf, imatrix, samples, tools, vendor
from toolkit.engine import Engine, EngineSettings
from toolkit.lora import LoraSettings, export_lora

TOOLKIT = Path(gguf.__file__).resolve().parent


def load_gguf_py():
    """llama.cpp's gguf package from the provisioned converter, imported without touching the
    `gguf` that the rest of the process (transformers) sees."""
    conv = vendor.find()
    if conv is None or not (conv.gguf_py / "gguf" / "gguf_reader.py").is_file():
        pytest.fail(f"llama.cpp's gguf-py is not provisioned (expected in {vendor.converter_dir() / 'gguf-py'}): "
                    "run `toolkit setup` (scripts/setup.sh does)", pytrace=False)

    def ours(name: str) -> bool:
        return name == "gguf" or name.startswith("gguf.")

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(conv.gguf_py))
    try:
        module = importlib.import_module("gguf")
    finally:
        sys.path.remove(str(conv.gguf_py))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(conv.gguf_py.resolve()), f"imported gguf from {where}, not from {conv.gguf_py}"
    return module


@pytest.fixture(scope="module")
def gguf_py():
    return load_gguf_py()


# --- the tables -------------------------------------------------------------------------------

def type_table_differences(table: dict[int, tuple[str, int, int]], gguf_py) -> list[str]:
    """Every ggml type whose (name, elements per block, bytes per block) in `table` is not gguf-py's."""
    theirs = {int(t): (t.name, *gguf_py.GGML_QUANT_SIZES.get(t, (None, None))) for t in gguf_py.GGMLQuantizationType}
    return [f"ggml type {tid}: toolkit {table.get(tid)}, gguf-py {theirs.get(tid)}"
            for tid in sorted(set(table) | set(theirs)) if table.get(tid) != theirs.get(tid)]


def test_ggml_type_table_is_gguf_pys(gguf_py):
    assert type_table_differences(gguf.GGML_TYPES, gguf_py) == []
    assert len(gguf.GGML_TYPES) == len(gguf_py.GGMLQuantizationType)  # (not vacuous)


@pytest.mark.parametrize("change, said", [
    (("set", 12, ("Q4_K", 256, 146)),
     "ggml type 12: toolkit ('Q4_K', 256, 146), gguf-py ('Q4_K', 256, 144)"),
    (("set", 8, ("Q8_0", 16, 34)), "ggml type 8: toolkit ('Q8_0', 16, 34), gguf-py ('Q8_0', 32, 34)"),
    (("set", 30, ("BF_16", 1, 2)), "ggml type 30: toolkit ('BF_16', 1, 2), gguf-py ('BF16', 1, 2)"),
    (("del", 39, None), "ggml type 39: toolkit None, gguf-py ('MXFP4', 32, 17)"),
    (("set", 99, ("Q9_9", 32, 9)), "ggml type 99: toolkit ('Q9_9', 32, 9), gguf-py None"),
], ids=["bytes", "block", "name", "missing", "extra"])
def test_the_type_table_check_names_a_changed_entry(gguf_py, monkeypatch, change, said):
    op, tid, entry = change
    if op == "set":
        monkeypatch.setitem(gguf.GGML_TYPES, tid, entry)
    else:
        monkeypatch.delitem(gguf.GGML_TYPES, tid)
    assert type_table_differences(gguf.GGML_TYPES, gguf_py) == [said]


def test_file_type_names_are_gguf_pys(gguf_py):
    theirs = {int(ft): ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")
              for ft in gguf_py.LlamaFileType if ft != gguf_py.LlamaFileType.GUESSED}
    assert gguf.FILE_TYPES == theirs


def test_value_type_codes_are_gguf_pys(gguf_py):
    vt = gguf_py.GGUFValueType
    assert (gguf._STRING, gguf._ARRAY) == (vt.STRING, vt.ARRAY)
    assert set(gguf._SCALARS) | {gguf._STRING, gguf._ARRAY} == {int(t) for t in vt}
    # Each scalar is read as gguf-py reads it: the same width, signedness and kind, little-endian.
    as_numpy = gguf_py.GGUFReader.gguf_scalar_to_np
    assert {code: np.dtype(fmt) for code, fmt in gguf._SCALARS.items()} == \
        {int(t): np.dtype(np_type).newbyteorder("<") for t, np_type in as_numpy.items()}
    assert gguf.MAGIC == struct.pack("<I", gguf_py.GGUF_MAGIC)
    assert gguf_py.GGUF_DEFAULT_ALIGNMENT == 32  # read()'s default when general.alignment is absent
    assert gguf_py.GGUF_VERSION == 3  # read() takes versions 2 and 3, as GGUFReader does


# --- the metadata key names -------------------------------------------------------------------

# Every key toolkit reads from a GGUF header, as gguf-py's constants name it.
KEYS_TOOLKIT_READS = {
    "general.architecture": ("General", "ARCHITECTURE"),
    "general.alignment": ("General", "ALIGNMENT"),
    "general.file_type": ("General", "FILE_TYPE"),
    "general.name": ("General", "NAME"),
    "general.type": ("General", "TYPE"),
    "tokenizer.ggml.model": ("Tokenizer", "MODEL"),
    "tokenizer.ggml.pre": ("Tokenizer", "PRE"),
    "tokenizer.ggml.tokens": ("Tokenizer", "LIST"),
    "tokenizer.chat_template": ("Tokenizer", "CHAT_TEMPLATE"),
    "{arch}.context_length": ("LLM", "CONTEXT_LENGTH"),
    "{arch}.block_count": ("LLM", "BLOCK_COUNT"),
    "{arch}.embedding_length": ("LLM", "EMBEDDING_LENGTH"),
    "{arch}.feed_forward_length": ("LLM", "FEED_FORWARD_LENGTH"),
    "{arch}.vocab_size": ("LLM", "VOCAB_SIZE"),
    "{arch}.attention.head_count": ("Attention", "HEAD_COUNT"),
    "{arch}.attention.head_count_kv": ("Attention", "HEAD_COUNT_KV"),
    "{arch}.attention.key_length": ("Attention", "KEY_LENGTH"),
    "{arch}.attention.value_length": ("Attention", "VALUE_LENGTH"),
    "{arch}.attention.sliding_window": ("Attention", "SLIDING_WINDOW"),
}

_METADATA_NAMES = {"metadata", "meta", "md"}


def _key_template(node: ast.AST) -> str | None:
    """"general.type" -> itself; f"{arch}.block_count" -> "{arch}.block_count"; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (isinstance(node, ast.JoinedStr) and len(node.values) == 2 and isinstance(node.values[0], ast.FormattedValue)
            and isinstance(node.values[1], ast.Constant) and node.values[1].value.startswith(".")):
        return "{arch}" + node.values[1].value
    return None


def keys_read_by_toolkit() -> dict[str, set[str]]:
    """The metadata keys toolkit's modules read from a header, found in their source: subscripts and
    .get() of a `metadata`/`meta`/`md`, fit.shape_of's number("...") and its per-layer f"{arch}.{k}"
    tuple. Key -> the modules reading it."""
    found: dict[str, set[str]] = {}
    for path in sorted(TOOLKIT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            keys: list[str | None] = []
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "get":
                    owner = func.value
                    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
                    if name in _METADATA_NAMES:
                        keys.append(_key_template(node.args[0]))
                elif isinstance(func, ast.Name) and func.id == "number" and isinstance(node.args[0], ast.Constant):
                    keys.append("{arch}." + node.args[0].value)
            elif isinstance(node, ast.Subscript):
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
                if name in _METADATA_NAMES:
                    keys.append(_key_template(node.slice))
            elif (isinstance(node, ast.GeneratorExp) and isinstance(node.elt, ast.JoinedStr)
                  and [type(v) for v in node.elt.values] == [ast.FormattedValue, ast.Constant, ast.FormattedValue]
                  and node.elt.values[1].value == "." and isinstance(node.generators[0].iter, ast.Tuple)):
                keys += ["{arch}." + e.value for e in node.generators[0].iter.elts if isinstance(e, ast.Constant)]
            for key in keys:
                if key is not None:
                    found.setdefault(key, set()).add(path.relative_to(TOOLKIT.parent).as_posix())
    return found


def test_metadata_key_names_are_gguf_pys(gguf_py):
    named = {key: getattr(getattr(gguf_py.Keys, group), attr) for key, (group, attr) in KEYS_TOOLKIT_READS.items()}
    assert named == {key: key for key in KEYS_TOOLKIT_READS}
    found = keys_read_by_toolkit()
    # Every key read in toolkit's source is one we know gguf-py's name of (a new or misspelt key fails here) ...
    assert {k: sorted(v) for k, v in found.items() if k not in KEYS_TOOLKIT_READS} == {}
    # ... and the scan sees the reads it should (it would pass vacuously if it found nothing).
    assert set(found) == set(KEYS_TOOLKIT_READS)


# --- the files --------------------------------------------------------------------------------

def as_toolkit_header(ref, path: Path, gguf_py) -> gguf.GGUFFile:
    """gguf-py's reading of a file in toolkit's own form (long arrays summarised as read() does),
    so that toolkit's consumers (fit.shape_of, the header's properties) can run on either."""
    metadata = {}
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types[0] == gguf_py.GGUFValueType.ARRAY and len(field.data) > gguf._ARRAY_KEEP:
            metadata[key] = gguf.ArraySummary(int(field.types[1]), len(field.data))
        else:
            metadata[key] = field.contents()
    tensors = [gguf.TensorInfo(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type),
                               int(t.data_offset) - int(ref.data_offset)) for t in ref.tensors]
    version = int(ref.fields["GGUF.version"].parts[0][0])
    return gguf.GGUFFile(path, version, metadata, tensors, int(ref.data_offset), path.stat().st_size)


def reader_differences(ours: gguf.GGUFFile, ref, gguf_py, full: gguf.GGUFFile | None = None) -> list[str]:
    """What toolkit's reading of a file (`ours`; `full`: read again keeping every array) says
    otherwise than gguf-py's GGUFReader (`ref`). Empty when they agree."""
    out: list[str] = []

    def differ(what: str, a, b) -> None:
        if a != b or type(a) is not type(b):
            out.append(f"{what}: toolkit {a!r:.200}, gguf-py {b!r:.200}")

    vt = gguf_py.GGUFValueType
    differ("version", ours.version, int(ref.fields["GGUF.version"].parts[0][0]))
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    differ("metadata keys", list(ours.metadata), keys)
    for key in keys:
        if key not in ours.metadata:
            continue
        field, value = ref.fields[key], ours.metadata[key]
        if field.types[0] == vt.ARRAY:
            item_type = int(field.types[1]) if len(field.types) > 1 else None
            if isinstance(value, gguf.ArraySummary):
                differ(f"{key} (array type, length)", (value.item_type, value.length), (item_type, len(field.data)))
            else:
                differ(key, value, field.contents())
            if full is not None:  # every element, decoded by both
                differ(f"{key} (every element)", full.metadata[key], field.contents())
        else:
            differ(key, value, field.contents())

    ours_tensors = [(t.name, t.type_id, t.type_name, t.shape, ours.data_offset + t.offset, t.n_elements, t.nbytes)
                    for t in ours.tensors]
    ref_tensors = [(t.name, int(t.tensor_type), gguf_py.GGMLQuantizationType(t.tensor_type).name,
                    tuple(int(d) for d in t.shape), int(t.data_offset), int(t.n_elements), int(t.n_bytes))
                   for t in ref.tensors]
    differ("tensor count", len(ours_tensors), len(ref_tensors))
    for a, b in zip(ours_tensors, ref_tensors):
        if a != b:
            differ(f"tensor {b[0]} (name, type id, type, shape, offset, elements, bytes)", a, b)
    differ("data offset", ours.data_offset, int(ref.data_offset))

    # What toolkit takes from a header, through its own properties, on gguf-py's reading of it.
    theirs = as_toolkit_header(ref, ours.path, gguf_py)
    for prop in ("architecture", "file_type", "file_type_name", "n_params", "tensor_bytes", "bits_per_weight",
                 "context_length", "block_count", "n_vocab", "chat_template"):
        differ(prop, getattr(ours, prop), getattr(theirs, prop))
    differ("tensor types", ours.tensor_type_counts(), theirs.tensor_type_counts())
    for key in ("general.type", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.pre"):
        differ(key, ours.metadata.get(key), theirs.metadata.get(key))
    # The parameter count against gguf-py's own per-tensor count, not only through our property.
    # Counts against gguf-py's own per-tensor figures (which use its type table, not ours).
    differ("parameters (gguf-py's tensors)", ours.n_params, sum(int(t.n_elements) for t in ref.tensors))
    differ("tensor bytes (gguf-py's tensors)", ours.tensor_bytes, sum(int(t.n_bytes) for t in ref.tensors))
    if ours.metadata.get("general.type", "model") == "model" and any(t.name.startswith("blk.") for t in ours.tensors):
        differ("fit.shape_of", fit.shape_of(ours.path, ours), fit.shape_of(ours.path, theirs))
    return out


@pytest.fixture(scope="module")
def opened(gguf_py):
    """path -> gguf-py's GGUFReader of it, each file opened once (it takes seconds)."""
    cache: dict[Path, object] = {}

    def get(path: Path):
        if path not in cache:
            cache[path] = gguf_py.GGUFReader(path)
        return cache[path]
    return get


@pytest.fixture(scope="module")
def layout_gguf(smollm2_hf, tmp_path_factory):
    """The Qwen3, EXAONE 4 and EXAONE 3 layouts, by test_quantize's own builders (four random layers),
    converted to BF16 only. SmolLM2's tokenizer (49k) instead of Qwen's (151k): the layout is what
    is on trial here, and gguf-py takes seconds per 50k vocabulary entries."""
    from test_quantize import random_checkpoint, random_exaone3_checkpoint

    shapes = {"qwen3": {"head_dim": 128},
              "exaone4": {"head_dim": 64, "sliding_window": 128, "sliding_window_pattern": 4}}
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            where = tmp_path_factory.mktemp(f"layout-{kind}")
            checkpoint = (random_exaone3_checkpoint(smollm2_hf, where / "tiny-exaone") if kind == "exaone" else
                          random_checkpoint(kind, smollm2_hf, where / f"tiny-{kind}", **shapes[kind]))
            built[kind] = convert.convert(checkpoint, where / f"tiny-{kind}-BF16.gguf", "bf16")
        return built[kind]
    return get


@pytest.fixture(scope="module")
def imatrix_gguf(tmp_path_factory) -> Path:
    """llama-imatrix's GGUF for the embedded SmolLM2 over the fewest tokens it takes: two chunks of
    64 of the bundled prose (each chunk costs seconds on a CPU)."""
    tools.require()  # built by scripts/setup.sh (`toolkit setup --tools`): a missing build fails here
    model = embedded.smollm2_gguf()
    prose = (samples.samples_path().parent / "prose_ko.txt").read_text(encoding="utf-8")
    with Engine(model, EngineSettings(n_gpu_layers="auto")) as vocab:  # vocabulary only
        size = 20
        while len(vocab.tokenize(prose[:size])) < 140:
            size += 20
        n_tokens = len(vocab.tokenize(prose[:size])) + 1
    calib = imatrix.Calibration(prose[:size], "prose_ko.txt", 0, "")
    out = tmp_path_factory.mktemp("imatrix") / "smol.imatrix.gguf"
    assert imatrix.compute(model, calib, out, n_tokens).chunks == 2
    return out


@pytest.fixture(scope="module")
def lora_gguf(smollm2_hf, smollm2_lora, tmp_path_factory) -> Path:
    """conftest's smollm2_lora, as `toolkit lora` writes it (F16)."""
    settings = LoraSettings(output_dir=tmp_path_factory.mktemp("lora"))
    return export_lora(str(smollm2_lora), str(smollm2_hf), settings).path


MODELS = {
    "smollm2-Q4_1": lambda request: embedded.smollm2_gguf(),
    # toolkit's own conversion and quantization (conftest's smollm2_kept); its BF16 intermediate is
    # left out: the layouts below are BF16, and gguf-py takes seconds on each 49k vocabulary.
    "smollm2-Q4_K_M": lambda request: next(f.path for f in request.getfixturevalue("smollm2_kept").files
                                           if f.type == "Q4_K_M"),
    "gemma3-Q4_K_M": lambda request: request.getfixturevalue("gemma3_gguf"),
    "qwen3-BF16": lambda request: request.getfixturevalue("layout_gguf")("qwen3"),
    "exaone4-BF16": lambda request: request.getfixturevalue("layout_gguf")("exaone4"),
    "exaone-BF16": lambda request: request.getfixturevalue("layout_gguf")("exaone"),
    "imatrix": lambda request: request.getfixturevalue("imatrix_gguf"),
    "lora-F16": lambda request: request.getfixturevalue("lora_gguf"),
    # llama.cpp's vocab-only GGUF: no tensors, and so (as ggml writes it) no padding after the header.
    "vocab-only-llama-spm": lambda request: request.getfixturevalue("converter").vocabs / "ggml-vocab-llama-spm.gguf",
}
EXPECTED = {  # what each file is, so that a fixture handing over the wrong file is seen
    "smollm2-Q4_1": ("llama", "model"), "smollm2-Q4_K_M": ("llama", "model"),
    "gemma3-Q4_K_M": ("gemma3", "model"), "qwen3-BF16": ("qwen3", "model"), "exaone4-BF16": ("exaone4", "model"),
    "exaone-BF16": ("exaone", "model"), "imatrix": ("unknown", "imatrix"), "lora-F16": ("llama", "adapter"),
    "vocab-only-llama-spm": ("llama", None),
}


def test_every_vocab_only_gguf_of_llama_cpp_is_read(converter):
    """ggml writes no padding after a header that no tensor data follows; read() took that for a
    truncated file (gguf-py and llama.cpp read it) until this cross-check found it."""
    files = sorted(converter.vocabs.glob("ggml-vocab-*.gguf"))
    assert len(files) > 10
    for path in files:
        header = gguf.read(path)
        assert header.tensors == [] and header.n_vocab > 1000, path.name


@pytest.mark.parametrize("model", MODELS)
def test_both_readers_agree_on_every_test_model(model, request, gguf_py, opened):
    path = MODELS[model](request)
    ours = gguf.read(path)
    long_arrays = tuple(k for k, v in ours.metadata.items() if isinstance(v, gguf.ArraySummary))
    full = gguf.read(path, keep_arrays=long_arrays)
    assert reader_differences(ours, opened(path), gguf_py, full) == []
    assert (ours.architecture, ours.metadata.get("general.type")) == EXPECTED[model]
    assert ours.tensors or model.startswith("vocab-only")


def test_the_file_check_names_what_differs(gguf_py, opened):
    path = embedded.smollm2_gguf()
    ours = gguf.read(path)
    embd = ours.tensors[0]
    assert (embd.name, embd.shape) == ("token_embd.weight", (576, 49152))
    ours.tensors[0] = dataclasses.replace(embd, shape=(49152, 576, 1))  # as many elements, another shape
    ours.metadata["llama.context_length"] = 4096
    assert reader_differences(ours, opened(path), gguf_py) == [
        "llama.context_length: toolkit 4096, gguf-py 8192",
        "tensor token_embd.weight (name, type id, type, shape, offset, elements, bytes): "
        "toolkit ('token_embd.weight', 8, 'Q8_0', (49152, 576, 1), 1785664, 28311552, 30081024), "
        "gguf-py ('token_embd.weight', 8, 'Q8_0', (576, 49152), 1785664, 28311552, 30081024)",
        "context_length: toolkit 4096, gguf-py 8192",
    ]


def test_a_changed_type_size_shows_in_the_file_check(gguf_py, opened, monkeypatch):
    path = embedded.smollm2_gguf()  # Q4_1: 20 bytes a block of 32
    monkeypatch.setitem(gguf.GGML_TYPES, 3, ("Q4_1", 32, 19))
    said = reader_differences(gguf.read(path), opened(path), gguf_py)
    assert any(s.startswith("tensor blk.0.attn_q.weight ") for s in said)
    assert any(s.startswith("tensor bytes (gguf-py's tensors): ") for s in said)
