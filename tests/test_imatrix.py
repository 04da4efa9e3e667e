"""Importance matrices calibrated on the task's own questions and answers (llama.cpp's tools)."""

from __future__ import annotations

import json
import shutil

import pytest

from toolkit import gguf, imatrix, samples, tools
from toolkit.engine import Engine, EngineSettings
from toolkit.errors import UserError
from toolkit.fidelity import compare
from toolkit.infer import InferSettings, resolve_model
from toolkit.prompts import PromptSet
from toolkit.quantize import QuantizeSettings, quantize

PROSE = samples.samples_path().parent / "prose_ko.txt"  # held out: not in any calibration set


@pytest.fixture(scope="session")
def built_tools() -> tools.Tools:
    # Built by scripts/setup.sh (`toolkit setup --tools`); a missing build fails here, loudly.
    return tools.require()


@pytest.fixture(scope="session")
def smollm2_imatrix_models(smollm2_hf, smollm2_kept, built_tools, tmp_path_factory):
    """Plain and imatrix Q4_K_M of SmolLM2 in one directory, the BF16 intermediate kept."""
    out = tmp_path_factory.mktemp("imatrix-models")
    directory = out / smollm2_kept.directory.name  # a copy of the plain quant and its kept intermediate
    directory.mkdir()
    for name in ("manifest.json", f"{directory.name}-BF16.gguf", f"{directory.name}-Q4_K_M.gguf"):
        shutil.copy(smollm2_kept.directory / name, directory / name)
    plain = quantize(str(smollm2_hf), QuantizeSettings(types=("Q4_K_M",), output_dir=out, check=False))
    assert [f.status for f in plain.files] == ["skipped"]
    calibrated = quantize(str(smollm2_hf), QuantizeSettings(types=("Q4_K_M", "Q2_K_S"), output_dir=out,
                                                           imatrix="auto", check=False))
    return plain, calibrated


def test_calibration_is_the_competition_prompt_and_its_answer(smollm2_bf16):
    items, source = imatrix.default_items()
    with Engine(smollm2_bf16, EngineSettings(n_gpu_layers="auto")) as vocab:
        calib = imatrix.calibration(items, source, vocab.header.chat_template, vocab.special_tokens(), "smol")
    text = calib.text
    assert calib.items == len(items) == 8 and source == "bundled samples"
    assert text.count("<|im_start|>system") == 8  # SmolLM2's ChatML, once per item
    assert text.count(PromptSet().system) == 8
    for item in items:
        assert item["input"]["question"] in text
        assert item["output"]["answer"].strip() in text
    # Answers follow their own prompt: each assistant turn opens right before the answer.
    first = items[0]["output"]["answer"].strip()
    assert text.index("<|im_start|>assistant") < text.index(first) < text.index(items[1]["input"]["question"])


def test_calibration_of_a_test_file_has_no_answers(smollm2_bf16, tmp_path):
    items = [{"id": "t1", "input": {"question_type": "교정형", "question": "우리만의 질문 문장입니다."}}]
    with Engine(smollm2_bf16, EngineSettings(n_gpu_layers="auto")) as vocab:
        calib = imatrix.calibration(items, "t.json", vocab.header.chat_template, vocab.special_tokens(), "smol")
    assert calib.text.rstrip().endswith("<|im_start|>assistant")


def test_chunk_size_fits_two_chunks():
    assert imatrix.chunk_size(5000) == 512
    assert imatrix.chunk_size(1024) == 512
    assert imatrix.chunk_size(1023) == 256
    assert imatrix.chunk_size(130) == 64
    with pytest.raises(UserError, match="at least 128"):
        imatrix.chunk_size(100)


def test_bad_calibration_files_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": 1}', encoding="utf-8")
    with pytest.raises(UserError, match="list of competition items"):
        imatrix.load_items(bad)
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        imatrix.load_items(bad)


def test_imatrix_quants_sit_beside_the_plain_ones(smollm2_imatrix_models):
    plain, calibrated = smollm2_imatrix_models
    by_type = {f.type: f for f in calibrated.files}
    assert set(by_type) == {"Q4_K_M-imatrix", "Q2_K_S-imatrix"}
    assert calibrated.convert_seconds is None  # the kept BF16 intermediate is reused, not converted again
    q4 = by_type["Q4_K_M-imatrix"].path
    assert q4.name == "SmolLM2-135M-Instruct-Q4_K_M-imatrix.gguf" and q4.is_file()
    assert plain.files[0].path.is_file() and plain.files[0].sha256 != by_type["Q4_K_M-imatrix"].sha256
    assert gguf.read(q4).file_type_name == "Q4_K_M"
    man = json.loads((calibrated.directory / "manifest.json").read_text())
    matrix = man["imatrix"]
    assert matrix["file"] == "SmolLM2-135M-Instruct.imatrix.gguf" and matrix["calibration"] == "bundled samples"
    assert matrix["calibration_items"] == 8 and matrix["chunks"] >= 2 and matrix["tokens"] >= 2 * matrix["n_ctx"]
    assert (calibrated.directory / matrix["file"]).is_file()
    assert man["files"]["Q4_K_M-imatrix"]["imatrix"]["sha256"] == matrix["sha256"]
    assert "imatrix" not in man["files"]["Q4_K_M"]  # the plain quant is still recorded as plain
    # llama.cpp reads the matrix back: it is a GGUF holding the activations' statistics.
    meta = gguf.read(calibrated.directory / matrix["file"]).metadata
    assert meta["general.type"] == "imatrix" and meta["imatrix.chunk_count"] == matrix["chunks"]


def test_infer_does_not_take_the_matrix_for_a_model(smollm2_imatrix_models, tmp_path):
    """`quantize --iq2_m --imatrix auto` leaves one quant and its matrix: infer picks the quant."""
    _, calibrated = smollm2_imatrix_models
    models = tmp_path / "models" / "smol"
    models.mkdir(parents=True)
    q2 = {f.type: f.path for f in calibrated.files}["Q2_K_S-imatrix"]
    matrix = calibrated.directory / calibrated.imatrix["file"]
    for path in (q2, matrix):
        (models / path.name).symlink_to(path)
    assert resolve_model(InferSettings(models_dir=models.parent)) == models / q2.name


def test_imatrix_lowers_kl_divergence_on_held_out_text(smollm2_imatrix_models, tmp_path):
    plain, calibrated = smollm2_imatrix_models
    bf16 = plain.directory / "SmolLM2-135M-Instruct-BF16.gguf"
    q4_imatrix = {f.type: f.path for f in calibrated.files}["Q4_K_M-imatrix"]
    text = tmp_path / "prose.txt"  # half the prose (~760 scored positions): the gap is ~30 %
    prose = PROSE.read_text(encoding="utf-8")
    text.write_text(prose[:len(prose) // 2], encoding="utf-8")
    ref, plain_row, imatrix_row = compare(bf16, [plain.files[0].path, q4_imatrix], text, n_ctx=256)
    assert imatrix_row.kld_mean < plain_row.kld_mean
    assert imatrix_row.top1_agreement >= plain_row.top1_agreement - 0.01


def test_rerun_reuses_the_matrix_and_skips_finished_files(smollm2_hf, smollm2_imatrix_models):
    _, calibrated = smollm2_imatrix_models
    again = quantize(str(smollm2_hf), QuantizeSettings(types=("Q4_K_M",), output_dir=calibrated.directory.parent,
                                                      imatrix="auto", check=False))
    assert [f.status for f in again.files] == ["skipped"]
    assert again.imatrix == calibrated.imatrix  # what the skipped file was made with, from the manifest
    # A new type reuses the matrix: the calibration text and the source are unchanged.
    before = (calibrated.directory / "SmolLM2-135M-Instruct.imatrix.gguf").stat().st_mtime_ns
    more = quantize(str(smollm2_hf), QuantizeSettings(types=("Q3_K_S",), output_dir=calibrated.directory.parent,
                                                     imatrix="auto", check=False))
    assert [(f.type, f.status) for f in more.files] == [("Q3_K_S-imatrix", "built")]
    assert more.imatrix_seconds is None and more.imatrix["sha256"] == calibrated.imatrix["sha256"]
    assert (calibrated.directory / "SmolLM2-135M-Instruct.imatrix.gguf").stat().st_mtime_ns == before


def test_another_calibration_set_makes_the_imatrix_quant_again(smollm2_hf, smollm2_imatrix_models, tmp_path):
    """A finished imatrix quant is skipped only when it was made on the calibration set asked for."""
    _, calibrated = smollm2_imatrix_models
    directory = tmp_path / "models" / calibrated.directory.name  # a copy: the fixture's files stay as they are
    directory.mkdir(parents=True)
    for name in ("manifest.json", "SmolLM2-135M-Instruct-BF16.gguf", "SmolLM2-135M-Instruct-Q4_K_M-imatrix.gguf",
                 "SmolLM2-135M-Instruct.imatrix.gguf"):
        shutil.copy(calibrated.directory / name, directory / name)
    calib = tmp_path / "train.json"
    calib.write_text(json.dumps(samples.samples_with_gold()[:3], ensure_ascii=False), encoding="utf-8")
    settings = QuantizeSettings(types=("Q4_K_M",), output_dir=directory.parent, imatrix="auto", calibration=calib,
                                check=False)
    again = quantize(str(smollm2_hf), settings)
    assert [f.status for f in again.files] == ["built"] and again.imatrix_seconds is not None
    assert again.imatrix["calibration"] == "train.json" and again.imatrix["calibration_items"] == 3
    entry = json.loads((directory / "manifest.json").read_text())["files"]["Q4_K_M-imatrix"]
    assert entry["imatrix"]["calibration"] == "train.json" and entry["imatrix"]["sha256"] == again.imatrix["sha256"]
    assert [f.status for f in quantize(str(smollm2_hf), settings).files] == ["skipped"]


def test_base_model_calibration_is_plain_text():
    # gemma-3-270m (a base model) has no chat template: the prompts are the messages themselves.
    items, source = imatrix.default_items()
    calib = imatrix.calibration(items, source, None, {}, "gemma-3-270m")
    assert "<|im_start|>" not in calib.text and "<start_of_turn>" not in calib.text
    assert calib.text.startswith(PromptSet().system)
    assert all(i["output"]["answer"].strip() in calib.text for i in items)


def test_an_imatrix_quant_is_sized_by_llama_quantizes_own_dry_run_with_the_matrix(smollm2_imatrix_models, small_disk,
                                                                                 tmp_path):
    """For IQ types the matrix decides some tensors' types, so the size comes from a dry run with it."""
    from toolkit.errors import DiskFull
    from toolkit.quantizer import quantize_file_with_imatrix

    _, calibrated = smollm2_imatrix_models
    directory = calibrated.directory
    src, matrix = directory / f"{directory.name}-BF16.gguf", directory / f"{directory.name}.imatrix.gguf"
    made = tmp_path / "x-IQ3_XXS.gguf"
    quantize_file_with_imatrix(src, made, "IQ3_XXS", matrix)
    size = made.stat().st_size
    disk = small_disk(size // (1 << 20) - 2)
    with pytest.raises(DiskFull) as e:
        quantize_file_with_imatrix(src, disk / "x-IQ3_XXS.gguf", "IQ3_XXS", matrix)
    assert f"writing x-IQ3_XXS.gguf needs about {size / 1e6:.0f} MB under {disk}" in str(e.value)
    assert list(disk.iterdir()) == []
