"""The items a probe set or attack set holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Prompt:
    """One prompt to generate from: a harmful request or a benign one."""

    id: str
    category: str
    text: str
    group: str = ""  # "unsafe" for XSTest's contrast prompts, reported apart from the safe ones


QUESTION_FORMAT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class Question:
    """A multiple-choice item scored by log-likelihood; ``answer`` indexes ``options``.

    Each option is a (context, continuation) pair: the continuation's log-probability
    after the context is its score. Most formats share one context ("Question: ...
    Answer:") across options; WinoGrande varies the context and keeps the continuation.
    """

    id: str
    category: str
    options: tuple[tuple[str, str], ...]
    answer: int

    @classmethod
    def shared(cls, id: str, category: str, context: str, choices: Sequence[str], answer: int) -> "Question":
        return cls(id, category, tuple((context, choice) for choice in choices), answer)


@dataclass(frozen=True)
class Conversation:
    """A chat conversation for fine-tuning: role/content messages."""

    id: str
    messages: tuple[dict[str, str], ...]
