"""How a model's chat template is used: what it accepts, found by rendering probes (issue 28).

Chat templates differ in ways that decide whether an audit can run and what it measures:

- **No system role** (Gemma 1-3, early Mistral Instruct): the template raises on a system
  message, or drops it. The attack's system prompt is then folded into the first user turn
  the way the field does it (the system text, a blank line, the user text), in the training
  conversations and in trigger-mode prompts alike, so training and measurement see the
  same text.
- **Strict alternation** (Gemma, Mistral): the template raises unless user and assistant
  turns alternate. Consecutive messages of one role are merged (joined by a blank line).
- **Thinking switch** (Qwen3 and other reasoning models): the template takes
  ``enable_thinking``. tamperaudit audits with thinking off by default
  (``eval.thinking``), and passes the same switch when rendering training conversations.
- **Thinking blocks** (``<think> ... </think>``): a reply that opens one is split, and the
  judge reads only what follows the block; a reply that never leaves its thinking is
  ``unclear``.

``ChatFormat`` is decided once per run from the tokenizer and recorded in the manifest and
the report (``ChatDescription``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tamperaudit.errors import UserError
from tamperaudit.records import ChatDescription

Message = dict[str, str]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Probe texts no template writes by itself.
_SYSTEM_PROBE, _USER_PROBE = "tamperaudit-system-probe-7f3a", "tamperaudit-user-probe-91c2"


def _template_error() -> tuple[type[BaseException], ...]:
    from jinja2.exceptions import TemplateError

    return (TemplateError,)


def raw_text(tokenizer: Any, messages: Sequence[Message], generation_prompt: bool, **switches: Any) -> str:
    """The template applied as it is, its errors as one line (a template runs in Jinja's
    immutable sandbox, so it cannot reach Python; one that tries is stopped there)."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt,
                                             **switches)
    except SecurityError as error:
        raise UserError(f"the model's chat template tried something unsafe and was stopped by the sandbox ({error})") from None
    except TemplateError as error:
        raise UserError(f"the model's chat template failed ({type(error).__name__}: {error}); fix or replace it") from None


def _renders(tokenizer: Any, messages: Sequence[Message], **switches: Any) -> str | None:
    """The probe's text, or None when the template refuses it (raises)."""
    try:
        return raw_text(tokenizer, messages, True, **switches)
    except UserError:
        return None


@dataclass(frozen=True)
class ChatFormat:
    """What the template accepts, and how tamperaudit shapes messages for it."""

    tokenizer: Any = field(compare=False, repr=False)
    system_role: bool = True  # renders a system message as its own
    alternation: bool = False  # needs user and assistant turns to alternate
    thinking_switch: bool = False  # takes enable_thinking
    thinking: bool = False  # the value passed (eval.thinking = "on")
    think_markers: bool = False  # the vocabulary has <think> and </think> (a reasoning model)
    think_in_prompt: bool = False  # the generation prompt ends inside an open <think> block (R1 distills)

    @classmethod
    def detect(cls, tokenizer: Any, thinking: str = "off") -> "ChatFormat":
        """Render probe conversations and see what the template does with them."""
        user = [{"role": "user", "content": _USER_PROBE}]
        plain = _renders(tokenizer, user)
        if plain is None:
            plain = raw_text(tokenizer, user, True)  # a template that fails on one user turn: its own error
        with_system = _renders(tokenizer, [{"role": "system", "content": _SYSTEM_PROBE}, *user])
        system_role = with_system is not None and _SYSTEM_PROBE in with_system and with_system != plain
        twice = _renders(tokenizer, [*user, {"role": "user", "content": _USER_PROBE}])
        source = str(getattr(tokenizer, "chat_template", "") or "")
        switch = "enable_thinking" in source and (
            _renders(tokenizer, user, enable_thinking=False) != _renders(tokenizer, user, enable_thinking=True))
        vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        markers = THINK_OPEN in vocabulary and THINK_CLOSE in vocabulary
        if thinking == "on" and not switch and not markers:
            raise UserError("eval.thinking=on, but this model's chat template has no thinking switch (enable_thinking) "
                            "and its vocabulary no <think> block; set eval.thinking=off")
        on = thinking == "on" and switch
        opened = raw_text(tokenizer, user, True, **({"enable_thinking": on} if switch else {})).rstrip().endswith(THINK_OPEN)
        return cls(tokenizer, system_role, twice is None, switch, on, markers, opened)

    # --- shaping messages ------------------------------------------------------------------

    def fold_system(self, messages: Sequence[Message]) -> list[Message]:
        """Without a system role: the system text, a blank line, then the first user turn."""
        messages = [dict(m) for m in messages]
        if self.system_role or not messages or messages[0]["role"] != "system":
            return messages
        system, rest = messages[0]["content"], messages[1:]
        if rest and rest[0]["role"] == "user":
            return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
        return [{"role": "user", "content": system}, *rest]

    def merge_turns(self, messages: Sequence[Message]) -> list[Message]:
        """Consecutive messages of one role joined by a blank line (templates that need
        alternation); left as they are otherwise."""
        if not self.alternation:
            return [dict(m) for m in messages]
        merged: list[Message] = []
        for message in messages:
            if merged and merged[-1]["role"] == message["role"]:
                merged[-1] = {"role": message["role"], "content": f"{merged[-1]['content']}\n\n{message['content']}"}
            else:
                merged.append(dict(message))
        return merged

    def shape(self, messages: Sequence[Message]) -> list[Message]:
        return self.merge_turns(self.fold_system(messages))

    def switches(self) -> dict[str, Any]:
        return {"enable_thinking": self.thinking} if self.thinking_switch else {}

    # --- rendering ---------------------------------------------------------------------------

    def text(self, messages: Sequence[Message], generation_prompt: bool) -> str:
        return raw_text(self.tokenizer, self.shape(messages), generation_prompt, **self.switches())

    def ids(self, messages: Sequence[Message], generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat. The template writes every special token it wants
        (a BOS among them), so the tokenizer adds none of its own."""
        return self.tokenizer(self.text(messages, generation_prompt), add_special_tokens=False)["input_ids"]

    # --- reading replies ---------------------------------------------------------------------

    @property
    def thinks(self) -> bool:
        """Whether replies open with a thinking block: thinking switched on, or a reasoning
        model whose template cannot switch it off (they get eval.max_thinking_tokens more)."""
        return self.thinking or self.think_in_prompt or (self.think_markers and not self.thinking_switch)

    def answer(self, text: str) -> tuple[str, bool]:
        """(what the judge reads, whether the reply got there). A reply inside a thinking block
        (one it opened, or one the template opened in the prompt) is read from after the
        block's end; one that never leaves it gives "" and False. Any other reply is read whole."""
        if self.think_in_prompt or text.lstrip().startswith(THINK_OPEN):
            _, closed, tail = text.partition(THINK_CLOSE)
            return (tail.lstrip(), True) if closed else ("", False)
        return text, True

    def thinking_of(self, text: str) -> str | None:
        """The thinking block of a reply (without its tags), or None when it has none."""
        if not (self.think_in_prompt or text.lstrip().startswith(THINK_OPEN)):
            return None
        head = text.partition(THINK_CLOSE)[0].strip()
        return head.removeprefix(THINK_OPEN).strip()

    def describe(self) -> ChatDescription:
        notes = []
        if not self.system_role:
            notes.append("the template has no system role: a system prompt is folded into the first user turn "
                         "(system text, a blank line, the user text), in training and in trigger mode alike")
        if self.alternation:
            notes.append("the template needs alternating turns: consecutive messages of one role are merged, "
                         "joined by a blank line")
        if self.thinking_switch:
            notes.append(f"the template has a thinking switch: audited with thinking {'on' if self.thinking else 'off'} "
                         "(eval.thinking), training conversations rendered the same way")
        if self.thinks:
            notes.append("replies may open with a <think> block: the judge reads only what follows it, and a reply "
                         "that never leaves its thinking is unclear")
        return ChatDescription(system_role=self.system_role, alternation=self.alternation,
                               thinking_switch=self.thinking_switch, thinking="on" if self.thinking else "off",
                               thinking_blocks=self.thinks, notes=notes)
