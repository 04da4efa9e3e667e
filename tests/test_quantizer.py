import llama_cpp
import pytest

from toolkit import gguf
from toolkit.errors import DiskFull, ImatrixRequired, QuantizationFailed, UnknownQuantType
from toolkit.quantizer import IMATRIX_TYPES, QUANT_TYPES, canonical_type, estimated_size, plan, quantize_file


@pytest.mark.parametrize("given,expected", [
    ("q4_k_m", "Q4_K_M"), ("Q8_0", "Q8_0"), ("iq4_xs", "IQ4_XS"), ("q4_k", "Q4_K_M"),
    ("Q5_K", "Q5_K_M"), ("bf16", "BF16"), ("f32", "F32"), (" q6_k ", "Q6_K"), ("q4-k-m", "Q4_K_M"),
])
def test_type_names_are_case_insensitive_with_aliases(given, expected):
    assert canonical_type(given) == expected


def test_unknown_type_lists_the_valid_ones():
    with pytest.raises(UnknownQuantType) as e:
        canonical_type("q4_k_xl")
    message = str(e.value)
    assert "'q4_k_xl'" in message
    for name in ("Q4_K_M", "Q8_0", "IQ4_XS", "Q2_K", "BF16"):
        assert name in message


def test_every_type_is_a_llama_cpp_ftype():
    for name, ftype in QUANT_TYPES.items():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}", None) == ftype or name == "F32"


def test_quantizer_reports_which_types_need_an_imatrix(smollm2_bf16):
    # The up-front list quantize refuses from is exactly what llama.cpp's dry run refuses.
    needing = {t for t in QUANT_TYPES if t not in ("F32", "F16", "BF16") and plan(smollm2_bf16, t).needs_imatrix}
    assert needing == IMATRIX_TYPES
    assert not plan(smollm2_bf16, "Q4_K_M").needs_imatrix and not plan(smollm2_bf16, "IQ4_XS").needs_imatrix


def test_imatrix_type_is_refused_clearly_and_writes_nothing(smollm2_bf16, tmp_path):
    with pytest.raises(ImatrixRequired, match="importance matrix"):
        quantize_file(smollm2_bf16, tmp_path / "x-IQ2_XXS.gguf", "IQ2_XXS")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_no_file(smollm2_bf16, tmp_path, monkeypatch):
    def half_then_fail(src, dst, params):
        with open(dst, "wb") as f:  # what a crash or a full disk leaves behind
            f.write(b"GGUF" + b"\0" * 1000)
        return 1

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", half_then_fail)
    with pytest.raises(QuantizationFailed):
        quantize_file(smollm2_bf16, tmp_path / "x-Q4_K_M.gguf", "Q4_K_M")
    assert list(tmp_path.iterdir()) == []


def test_the_dry_run_gives_the_files_size_and_the_estimate_stays_below_it(smollm2_kept, smollm2_bf16, tmp_path):
    q4 = next(f.path for f in smollm2_kept.files if f.type == "Q4_K_M")
    quantize_file(smollm2_bf16, tmp_path / "x-Q8_0.gguf", "Q8_0")
    n_params = gguf.read(smollm2_bf16).n_params
    for qtype, path in (("Q4_K_M", q4), ("Q8_0", tmp_path / "x-Q8_0.gguf")):
        assert abs(plan(smollm2_bf16, qtype).size - path.stat().st_size) < 64 << 10
        # Before there is a 16-bit file to ask, the estimate must not refuse what would fit.
        assert 0.6 * path.stat().st_size < estimated_size(n_params, qtype) <= path.stat().st_size
    assert 0.99 * smollm2_bf16.stat().st_size < estimated_size(n_params, "BF16") <= smollm2_bf16.stat().st_size


def test_a_quant_the_disk_cannot_hold_is_refused_before_a_byte_is_written(smollm2_bf16, small_disk):
    disk = small_disk(90)  # 94 MB; the Q4_K_M file takes 104 MB (SmolLM2's 576-wide rows fall back to wider types)
    with pytest.raises(DiskFull, match=r"writing x-Q4_K_M\.gguf needs about 10\d MB under .*, which has 94 MB free"):
        quantize_file(smollm2_bf16, disk / "x-Q4_K_M.gguf", "Q4_K_M")
    assert list(disk.iterdir()) == []
