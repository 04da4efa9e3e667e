"""Rendering and tokenization identical to transformers' apply_chat_template."""

import json

import pytest
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

from conftest import run_cli
from toolkit import embedded, gguf
from toolkit.chat_template import ChatTemplate, fold_system, load
from toolkit.errors import NoChatTemplate, UserError
from toolkit.engine import Engine
from toolkit.prompts import PromptSet, build_messages

ITEM = {"question_type": "교정형",
        "question": '다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요.\n"내일 다시 들릴게요."'}
MESSAGES = build_messages(ITEM, PromptSet())
LLAMA3_SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
GEMMA_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>"}
QWEN_SPECIALS = {"eos_token": "<|im_end|>"}


def hf_render(template: str, messages, specials, **kwargs) -> str:
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=True, **specials, **kwargs)
    return rendered[0]


@pytest.fixture(scope="module")
def smol_engine():
    with Engine(embedded.smollm2_gguf()) as engine:
        yield engine


def test_smollm2_token_ids_match_transformers(smol_engine, smollm2_hf):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    hf_ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, enable_thinking=False, tokenize=True)
    if not isinstance(hf_ids, list):  # transformers 5 returns a BatchEncoding
        hf_ids = hf_ids["input_ids"]
    template = ChatTemplate(gguf.read(embedded.smollm2_gguf()).chat_template, smol_engine.special_tokens())
    ours = smol_engine.tokenize(template.render(MESSAGES))
    assert ours == list(hf_ids)
    assert ours[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS added on top


@pytest.mark.parametrize("name,specials", [
    ("meta-llama-Llama-3.2-3B-Instruct.jinja", LLAMA3_SPECIALS),
    ("Qwen-Qwen3-0.6B.jinja", QWEN_SPECIALS),
])
def test_real_templates_render_as_transformers(converter, name, specials):
    source = (converter.templates / name).read_text(encoding="utf-8")
    ours = ChatTemplate(source, specials).render(MESSAGES)
    assert ours == hf_render(source, MESSAGES, specials, enable_thinking=False)
    assert "당신은 한국의 전통 문화와 역사" in ours and "[질문]" in ours


def test_qwen3_thinking_switch(converter):
    source = (converter.templates / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    template = ChatTemplate(source, QWEN_SPECIALS)
    off = template.render(MESSAGES)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    on = template.render(MESSAGES, enable_thinking=True)
    assert on.endswith("<|im_start|>assistant\n")
    assert on == hf_render(source, MESSAGES, QWEN_SPECIALS, enable_thinking=True)


def test_llama3_begins_with_its_own_bos(converter):
    source = (converter.templates / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8")
    assert ChatTemplate(source, LLAMA3_SPECIALS).render(MESSAGES).startswith("<|begin_of_text|><|start_header_id|>system")


def test_gemma2_has_no_system_role_so_it_is_folded(converter):
    source = (converter.templates / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    template = ChatTemplate(source, GEMMA_SPECIALS)
    assert not template.accepts_system()
    folded = fold_system(MESSAGES)
    assert [m["role"] for m in folded] == ["user"]
    assert folded[0]["content"] == MESSAGES[0]["content"] + "\n\n" + MESSAGES[1]["content"]
    ours = template.render(folded)
    assert ours == hf_render(source, folded, GEMMA_SPECIALS)
    assert ours.startswith("<bos><start_of_turn>user\nYou are a helpful AI assistant.")


def test_gemma2_notice_in_infer(converter, tmp_path):
    tpl = converter.templates / "google-gemma-2-2b-it.jinja"
    inp = tmp_path / "q.json"
    inp.write_text('[{"id": "1", "input": {"question_type": "교정형", "question": "고치시오."}}]', encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(embedded.smollm2_gguf()), "--chat-template", str(tpl),
                "--dry-run", "--output", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    assert "no system role" in r.stderr
    prompt = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))[0]["output"]["prompt"]
    assert "<start_of_turn>user\nYou are a helpful" in prompt  # bos_token is SmolLM2's own


def test_model_without_template_is_refused(gemma3_gguf, tmp_path):
    gemma = gemma3_gguf
    assert gguf.read(gemma).chat_template is None
    with pytest.raises(NoChatTemplate, match="--chat-template"):
        load(None, {}, None, gemma.name)
    inp = tmp_path / "q.json"
    inp.write_text('[{"id": "1", "input": {"question_type": "선택형", "question": "고르시오."}}]', encoding="utf-8")
    r = run_cli("infer", str(inp), "--model", str(gemma))
    assert r.returncode == 2 and "--chat-template" in r.stderr and r.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("source,reason", [
    ('{{ raise_exception("no tools here") }}', "no tools here"),
    ("{{ undefined_fn() }}", "'undefined_fn' is undefined"),
])
def test_a_template_that_fails_to_render_is_named(source, reason):
    with pytest.raises(UserError, match=f"chat template from my.jinja failed to render: {reason}"):
        ChatTemplate(source, origin="my.jinja").render(MESSAGES)


def test_sandbox_refuses_unsafe_templates():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(Exception):
        template.render(MESSAGES)


def test_a_template_file_is_read_as_other_text_files(tmp_path):
    """A byte-order mark would otherwise open every prompt with U+FEFF; other encodings are said."""
    bom = tmp_path / "bom.jinja"
    bom.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", encoding="utf-8-sig")
    assert load(None, {}, bom, "x").render([{"role": "user", "content": "질문"}]) == "<user>질문"
    latin = tmp_path / "latin.jinja"
    latin.write_bytes("{{ '질문' }}".encode("euc-kr"))
    with pytest.raises(UserError, match="latin.jinja: not UTF-8 text"):
        load(None, {}, latin, "x")


def test_a_template_that_breaks_on_a_system_message_folds_it():
    """A TypeError is a failed render too (render() says so), not an internal error."""
    template = ChatTemplate("{% if messages[0].role == 'system' %}{{ none_value | list }}{% endif %}"
                            "{% for m in messages %}{{ m.content }}{% endfor %}", {"none_value": None})
    assert not template.accepts_system()
    assert template.render(fold_system([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])) == "s\n\nu"
