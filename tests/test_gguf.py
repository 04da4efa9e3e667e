import re

import llama_cpp
import pytest

from conftest import header_only
from toolkit import embedded, gguf
from toolkit.errors import InvalidGGUF


@pytest.fixture(scope="module")
def smol():
    return gguf.read(embedded.smollm2_gguf())


def test_reads_header_of_real_model(smol):
    assert smol.architecture == "llama"
    assert smol.file_type == 3 and smol.file_type_name == "Q4_1"
    assert smol.context_length == 8192 and smol.block_count == 30
    assert smol.metadata["tokenizer.ggml.model"] == "gpt2"
    assert "<|im_start|>" in smol.chat_template
    assert smol.tensor_type_counts() == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def test_parameter_count_and_size_agree_with_llama_cpp(smol):
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = False
    model = llama_cpp.llama_model_load_from_file(str(smol.path).encode(), params)
    try:
        assert smol.n_params == llama_cpp.llama_model_n_params(model)
        assert smol.tensor_bytes == llama_cpp.llama_model_size(model)
    finally:
        llama_cpp.llama_model_free(model)


def test_file_type_names_match_llama_cpp_constants():
    exported = {name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_"): getattr(llama_cpp, name)
                for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED"}
    assert exported == {name: ftype for ftype, name in gguf.FILE_TYPES.items()}


def test_truncated_file_is_rejected(smol, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smol.path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(smol.file_size // 2))
    with pytest.raises(InvalidGGUF, match="truncated"):
        gguf.read(cut)


def test_header_cut_short_is_rejected(smol, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(smol.path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(4096))
    with pytest.raises(InvalidGGUF):
        gguf.read(cut)


@pytest.mark.parametrize("content", [b"", b"not a model at all, just text" * 10, b"GGUF\x09\x00\x00\x00" + b"\0" * 32])
def test_non_gguf_is_rejected(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(InvalidGGUF):
        gguf.read(bad)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidGGUF, match="no such file"):
        gguf.read(tmp_path / "nope.gguf")


@pytest.mark.parametrize("kind,said", [("imatrix", "is an importance matrix, not a model"),
                                       ("adapter", "is a LoRA adapter (give it to --lora), not a model")])
def test_a_gguf_that_is_not_a_model_is_named(tmp_path, kind, said):
    path = header_only(tmp_path / f"{kind}.gguf", kind)
    assert gguf.general_type(path) == kind and gguf.read(path).tensors == []
    with pytest.raises(InvalidGGUF, match=re.escape(said)):
        gguf.read_model(path)
    assert gguf.read_model(embedded.smollm2_gguf()).architecture == "llama"
    assert gguf.general_type(tmp_path / "none.gguf") is None
