"""The model interface the evals use, and the engines behind it.

Every eval talks to a ``LanguageModel``: one model state (the unattacked model, or the model
with one budget's LoRA adapter active) that renders chats, generates greedily, scores the
options of multiple-choice questions and gives next-token log-probabilities. The evals never
see a ``model, tokenizer`` pair, so any engine can stand behind them, and tests can use a
scripted fake (``tamperaudit.testing.ScriptedModel``).

Two engines implement it. ``hf`` (``backends/hf.py``) is the transformers model that is also
trained: tamperaudit's batched greedy loop, shared-context choice scoring, and the adapter
switched off in place for the unattacked distributions. ``vllm`` (``backends/vllm.py``)
serves the same base weights once in a vLLM engine and applies each budget's adapter as a
``LoRARequest``, never merged, so no full copy of attacked weights ever exists; it generates,
and hands choice scoring and next-token log-probabilities to the transformers model, which
they need whole.

Both generate from the same token-id prompts (rendered once by the model's chat template),
greedily, with the same stop tokens, ``max_new_tokens`` and early stops: the HF loop stops a
row when its verdict is settled, and vLLM's whole completions are cut at the same check
points afterwards (``generation.cut_at_settled``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from tamperaudit.generation import Completion, GenerationStats
from tamperaudit.records import BackendDescription

HF, VLLM = "hf", "vllm"  # the engines; which one a run uses is chosen in backends/choose.py

Message = dict[str, str]  # {"role": ..., "content": ...}
Settled = Callable[[int, list[int]], bool]  # (prompt index, tokens so far) -> the verdict can no longer change


@dataclass(frozen=True)
class ChoiceRequest:
    """Options that share one context: the summed log-probability of each continuation after it."""

    context: str
    continuations: tuple[str, ...]


class LanguageModel(Protocol):
    """One model state as the evals see it. Edge cases every implementation keeps:

    - ``render``: the model's own chat template with the assistant's turn opened, as token ids;
      a template that fails ends in one line (``UserError``).
    - ``generate``: greedy; completions in the order of ``prompts``; the end-of-turn token is
      left out of ``tokens`` and ``text``; ``finished`` only when an end-of-turn token ended
      the row (not ``max_new_tokens``); ``settled(index, tokens)``, when given, may stop row
      ``index`` early (then ``settled`` is True and ``finished`` False); the stats count
      generated tokens with their end-of-turn token.
    - ``choice_log_probs``: one list per request, one natural-log sum per continuation;
      ``on_batch(n)`` is called with the number of requests scored after each batch.
    - ``next_token_log_probs``: for each sequence, a float32 tensor of shape
      ``(len(sequence) - start, vocabulary)``: row ``i`` holds the log-probabilities
      predicting token ``start + i`` from the tokens before it.
    - ``without_adapter()``: this model with every adapter switched off, for the duration of a
      ``with`` block, and as it was afterwards, whatever happened inside.
    - ``split_reply``: (thinking block or None, the answer the judge reads, whether the reply
      reached an answer); a reply with no thinking block is its own answer.
    """

    engine: str  # the engine's name, recorded with each stage's throughput ("hf", "vllm", ...)

    def render(self, messages: Sequence[Message]) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, desc: str = "generating",
        settled: Settled | None = None,
    ) -> tuple[list[Completion], GenerationStats]: ...

    def choice_log_probs(
        self, requests: Sequence[ChoiceRequest], batch_size: int, on_batch: Callable[[int], None] | None = None
    ) -> list[list[float]]: ...

    def next_token_log_probs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[torch.Tensor]: ...

    def without_adapter(self) -> contextlib.AbstractContextManager["LanguageModel"]: ...

    def split_reply(self, text: str) -> tuple[str | None, str, bool]: ...


class Backend(Protocol):
    """The engine that generates for the refusal evals, chosen once per run."""

    name: str
    needs_adapter_files: bool  # True: a budget's adapter must be on disk to be served (vLLM)

    def model(self, hf: Any, adapter: Path | None) -> LanguageModel:
        """The model state to evaluate: ``hf`` (a ``backends.hf.HfModel``, which carries the
        budget's adapter in memory, if any) served by this engine, with ``adapter`` the folder
        that adapter was saved to (None for the unattacked model)."""
        ...

    def describe(self) -> BackendDescription: ...
