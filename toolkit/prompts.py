"""Stage: a competition item → chat messages (system + user), as the baseline builds them.

The system prompt is the seed baseline's. The instructions are our own Korean text: they
ask for the `"…"가 옳다.` form followed by the reason, with one short example each.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from . import console
from .dataset import read_text
from .errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The seed baseline's default --system_prompt (its backslash continuations join the lines).
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful AI assistant. Please answer the user's questions kindly. "
    "당신은 한국의 전통 문화와 역사, 문법, 사회, 과학기술 등 다양한 분야에 대해 잘 알고 있는 유능한 AI 어시스턴트 입니다. "
    "사용자의 질문에 대해 친절하게 답변해주세요. "
    "단, 동일한 문장을 절대 반복하지 마시오."
)

SELECTION_INSTRUCTION = """[지침]
질문에 제시된 보기 가운데 한국어 어문 규범에 맞는 표현을 골라 문장을 완성하고, 그것이 옳은 이유를 설명하십시오.
답변은 반드시 "완성한 문장"이 옳다. 로 시작하고, 그 뒤에 이유를 쓰십시오.

[예시]
질문: "오늘은 {왠지/웬지} 기분이 좋다." 가운데 올바른 것을 선택하고, 그 이유를 설명하세요.
답변: "오늘은 왠지 기분이 좋다."가 옳다. '왜인지'가 줄어든 말이므로 '왠지'로 적는다. '웬지'는 잘못된 표기이다."""

CORRECTION_INSTRUCTION = """[지침]
질문에 제시된 문장에서 한국어 어문 규범에 어긋나는 부분을 찾아 바르게 고치고, 고친 이유를 설명하십시오.
답변은 반드시 "고친 문장"이 옳다. 로 시작하고, 그 뒤에 이유를 쓰십시오.

[예시]
질문: 다음 문장에서 어문 규범에 부합하지 않는 부분을 찾아 고치고, 그 이유를 설명하세요. "동생은 어제 도서관에 갔데."
답변: "동생은 어제 도서관에 갔대."가 옳다. 남에게 들은 말을 전할 때는 '-다고 해'가 줄어든 '-대'를 쓴다. '-데'는 말하는 이가 직접 겪은 일을 떠올려 말할 때 쓴다."""

GENERIC_INSTRUCTION = """[지침]
다음 질문에 한국어 어문 규범에 근거하여 답하십시오. 선다형이면 정답 번호와 그 이유를, 단답형이면 짧은 답과 그 이유를, 서술형이면 완결된 문장으로 답하십시오."""

SELECTION, CORRECTION = "선택형", "교정형"
KNOWN_TYPES = (SELECTION, CORRECTION, "선다형", "서술형", "단답형")


@dataclass(frozen=True)
class PromptSet:
    system: str = DEFAULT_SYSTEM_PROMPT
    selection: str = SELECTION_INSTRUCTION
    correction: str = CORRECTION_INSTRUCTION
    generic: str = GENERIC_INSTRUCTION

    def instruction(self, question_type: str) -> str:
        if question_type == SELECTION:
            return self.selection
        if question_type == CORRECTION:
            return self.correction
        return self.generic


def text_or_file(value: str) -> str:
    """`@path` reads the text from a file (UTF-8); anything else is the text itself."""
    if value.startswith("@"):
        return read_text(Path(value[1:]).expanduser(), "prompt file").strip("\n")
    return value


_TOML_KEYS = {"system": "system", "selection": "selection", "선택형": "selection",
              "correction": "correction", "교정형": "correction", "generic": "generic"}


def load_prompt_file(path: Path, base: PromptSet = PromptSet()) -> PromptSet:
    """A TOML file with any of: system, selection (선택형), correction (교정형), generic."""
    text = read_text(Path(path), "prompts file")  # a BOM (Windows editors) dropped; not UTF-8 said so
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - set(_TOML_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown keys {', '.join(unknown)} (use {', '.join(_TOML_KEYS)})")
    changes = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise UserError(f"{path}: '{key}' must be a string")
        changes[_TOML_KEYS[key]] = value.strip("\n")
    return replace(base, **changes)


# The passages retrieve.py found for the question; it can miss, hence "may".
REFERENCES_HEADING = "[참고 규범]\n질문과 관련이 있을 수 있는 어문 규범입니다. 이유를 설명할 때 근거로 삼으십시오."
EXAMPLES_HEADING = "[참고 예시]\n비슷한 문제와 그 답변입니다."


def user_message(item_input: dict, prompts: PromptSet, references: Sequence[str] = (),
                 examples: Sequence[str] = ()) -> str:
    """Instruction for the type + the norms retrieved for it under [참고 규범] + solved questions
    like it under [참고 예시] + other input fields as 기타 정보 + the question under [질문]. The
    instruction comes first so that a type's questions still share their head (evaluated once in
    a batched run)."""
    qtype = str(item_input.get("question_type", ""))
    parts = [prompts.instruction(qtype)]
    if references:
        parts.append(REFERENCES_HEADING + "\n" + "\n".join(references))
    if examples:
        parts.append(EXAMPLES_HEADING + "\n\n" + "\n\n".join(examples))
    extra = {k: v for k, v in item_input.items() if k not in ("question_type", "question")}
    if extra:
        lines = [f"- {k}: {v if isinstance(v, str) else _compact(v)}" for k, v in extra.items()]
        parts.append("[기타 정보]\n" + "\n".join(lines))
    parts.append("[질문]\n" + str(item_input["question"]))
    return "\n\n".join(parts)


def _compact(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def build_messages(item_input: dict, prompts: PromptSet, references: Sequence[str] = (),
                   examples: Sequence[str] = ()) -> list[dict[str, str]]:
    messages = []
    if prompts.system:
        messages.append({"role": "system", "content": prompts.system})
    messages.append({"role": "user", "content": user_message(item_input, prompts, references, examples)})
    return messages


def warn_unknown_types(items: list[dict]) -> None:
    unknown = sorted({str(i["input"].get("question_type", "")) for i in items} - set(KNOWN_TYPES))
    if unknown:
        shown = ", ".join(repr(t) for t in unknown)
        console.warn(f"unknown question_type {shown}: answered with the generic instruction")
