"""Stage: messages → prompt text, by the model's own chat template, rendered as HF renders it.

Like transformers' apply_chat_template: a sandboxed jinja2 environment with trim_blocks
and lstrip_blocks, loop controls, a `tojson` that keeps Hangul unescaped,
`raise_exception` and `strftime_now`; the special tokens as variables; and the baseline's
add_generation_prompt=True, enable_thinking=False. The text is then tokenized without
adding BOS: a template that wants BOS writes it, exactly as HF does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .dataset import read_text
from .errors import NoChatTemplate, UserError


class _GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}` (assistant-mask markers): render the body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@dataclass
class ChatTemplate:
    source: str
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, …
    origin: str = "model file"

    def __post_init__(self) -> None:
        try:
            self._template = _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"chat template from {self.origin} does not parse: {e}") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        try:
            return self._render(messages, add_generation_prompt, **kwargs)
        except (jinja2.exceptions.TemplateError, TypeError, ValueError) as e:  # raise_exception(), an undefined name …
            raise UserError(f"chat template from {self.origin} failed to render: {e}") from None

    def _render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        variables = {**self.special_tokens, "enable_thinking": False, **kwargs}
        return self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **variables)

    def accepts_system(self) -> bool:
        """Some templates (gemma-2) raise on a system message."""
        try:
            self._render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
            return True
        except (jinja2.exceptions.TemplateError, TypeError, ValueError):  # as render() counts failures
            return False


def fold_system(messages: list[dict]) -> list[dict]:
    """For templates without a system role: the system text opens the first user message."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            break
    return rest


def load(gguf_template: str | None, special_tokens: dict[str, str], override: Path | None,
         model_name: str) -> ChatTemplate:
    if override is not None:  # a byte-order mark (Windows editors) dropped; not UTF-8 said so
        return ChatTemplate(read_text(Path(override), "chat template"), special_tokens, origin=str(override))
    if not gguf_template:
        raise NoChatTemplate(
            f"{model_name} has no chat template (tokenizer.chat_template); a base model? "
            "Give one with --chat-template FILE.jinja"
        )
    return ChatTemplate(gguf_template, special_tokens)
