"""The transformers engine: the model in memory that is trained, generated from and scored.

``HfModel`` is the ``LanguageModel`` the evals use on it: tamperaudit's batched greedy loop
(``generation.py``), multiple-choice scoring that runs each context once and shares its
key/value cache with the options (the vocabulary head only at positions that score an
option token), next-token log-probabilities over given sequences, and the LoRA layers
switched off in place for the unattacked model (no second copy of the weights). Whatever
adapter the model carries is active: that is the model state being measured.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from tamperaudit import progress
from tamperaudit.backends import ChoiceRequest, Message, Settled
from tamperaudit.chat import ChatFormat
from tamperaudit.generation import Completion, GenerationStats, generate, with_cache
from tamperaudit.models import text_config
from tamperaudit.records import BackendDescription


def _head_log_probs(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)


@torch.inference_mode()
def _score_batch(model: Any, contexts: list[list[int]], choices: list[list[list[int]]], pad_id: int) -> list[list[float]]:
    """Summed log-probability of every choice of every context in the batch."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    decoder = model.get_decoder()
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, context in enumerate(contexts):  # left padding: contexts end together
        ids[row, width - len(context) :] = torch.tensor(context)
        mask[row, width - len(context) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **with_cache(model, cache)).last_hidden_state
    first = _head_log_probs(model, hidden[:, -1])  # predicts each choice's first token

    counts = [len(c) for c in choices]
    # Host-side indices: they index tensors on any device, which a model spread over
    # several GPUs needs (its cache layers and head sit on different GPUs).
    owner = torch.tensor([q for q, n in enumerate(counts) for _ in range(n)])
    flat = [choice for group in choices for choice in group]
    cache.batch_select_indices(owner)  # each choice gets its context's cache (indices repeat)
    choice_width = max(len(c) for c in flat)
    choice_ids = torch.full((len(flat), choice_width), pad_id, dtype=torch.long, device=device)
    choice_mask = torch.zeros((len(flat), choice_width), dtype=torch.long, device=device)
    for row, choice in enumerate(flat):  # right padding after the shared context
        choice_ids[row, : len(choice)] = torch.tensor(choice)
        choice_mask[row, : len(choice)] = 1
    full_mask = torch.cat([mask[owner], choice_mask], dim=-1)
    choice_positions = positions[owner, -1:] + 1 + torch.arange(choice_width, device=device)
    scores = [0.0] * len(flat)
    if choice_width > 1:  # positions 0..n-2 of a choice predict its tokens 1..n-1
        hidden = decoder(
            input_ids=choice_ids[:, :-1],
            attention_mask=full_mask[:, :-1],
            position_ids=choice_positions[:, :-1],
            **with_cache(model, cache),
        ).last_hidden_state
        # hidden sits on the last layer's device (a spread model's last GPU), the ids on the first
        targets = choice_ids[:, 1:].to(hidden.device)
        valid = choice_mask[:, 1:].bool().to(hidden.device)
        log_probs = _head_log_probs(model, hidden[valid])
        picked = log_probs.gather(-1, targets[valid].to(log_probs.device).unsqueeze(-1)).squeeze(-1)
        rows = valid.nonzero()[:, 0].to(log_probs.device)
        sums = torch.zeros(len(flat), device=log_probs.device).index_add_(0, rows, picked)
        scores = sums.tolist()
    first_tokens = torch.tensor([c[0] for c in flat], device=first.device)
    first_scores = first[owner].gather(-1, first_tokens.unsqueeze(-1)).squeeze(-1).tolist()
    totals = [a + b for a, b in zip(first_scores, scores)]
    grouped, start = [], 0
    for n in counts:
        grouped.append(totals[start : start + n])
        start += n
    return grouped


@torch.inference_mode()
def _reply_log_probs(model: Any, sequences: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int) -> list[torch.Tensor]:
    """Log-probabilities predicting each token from ``start`` on (positions start-1 .. end-2) of each sequence."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(list(seq))
        mask[row, : len(seq)] = 1
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    return [_head_log_probs(model, hidden[row, start - 1 : len(seq) - 1]) for row, (seq, start) in enumerate(zip(sequences, starts))]


class HfModel:
    """A transformers causal LM and its tokenizer as a ``LanguageModel``, adapter (if any) active."""

    engine = "hf"

    def __init__(self, model: Any, tokenizer: Any, chat: ChatFormat | None = None) -> None:
        self.model = model  # a PreTrainedModel, or the PEFT wrapper around it once an attack starts
        self.tokenizer = tokenizer
        self._chat = chat

    @property
    def chat(self) -> ChatFormat:
        """How its chat template is used (tamperaudit.chat): the run's, or found at first use."""
        if self._chat is None:
            self._chat = ChatFormat.detect(self.tokenizer)
        return self._chat

    def render(self, messages: Sequence[Message]) -> list[int]:
        return self.chat.ids(messages)

    def split_reply(self, text: str) -> tuple[str | None, str, bool]:
        answer, reached = self.chat.answer(text)
        return self.chat.thinking_of(text), answer, reached

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, desc: str = "generating",
        settled: Settled | None = None,
    ) -> tuple[list[Completion], GenerationStats]:
        return generate(self.model, self.tokenizer, [list(p) for p in prompts], max_new_tokens, batch_size, desc=desc,
                        settled=settled)

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @functools.cached_property
    def _bos(self) -> list[int]:
        """[BOS] where the model expects one before plain text: its tokenizer adds one by itself
        (Llama, Gemma), or it is a Gemma model (lm-evaluation-harness adds it for Gemma alone,
        which scores near chance without it); [] otherwise (Qwen has no BOS)."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return []
        own = self.tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
        family = str(getattr(text_config(getattr(self.model, "config", None)), "model_type", "") or "")
        return [bos] if own or family.startswith("gemma") else []

    def _choice_unit(self, request: ChoiceRequest) -> tuple[list[int], list[list[int]]]:
        """The context's tokens (after a BOS where the model expects one) and each option's:
        as lm-evaluation-harness splits them, the option tokenized together with its context
        ("context option") and cut at the context's length, so that a tokenizer that merges
        across the space gives no stray leading piece."""
        context = self._tokens(request.context)
        options = []
        for continuation in request.continuations:
            whole = self._tokens(f"{request.context} {continuation}")
            option = whole[len(context):] or self._tokens(" " + continuation)
            options.append(option)
        return self._bos + context, options

    def choice_log_probs(
        self, requests: Sequence[ChoiceRequest], batch_size: int, on_batch: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """Each request's context run once, its cache shared by the continuations (each split
        from " ".join(context, option) as ``_choice_unit`` says), in batches of requests sorted
        by context length."""
        units = [self._choice_unit(r) for r in requests]
        order = sorted(range(len(units)), key=lambda i: len(units[i][0]))
        results: list[list[float]] = [[] for _ in requests]
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            scored = _score_batch(self.model, [units[i][0] for i in batch], [units[i][1] for i in batch],
                                  self.tokenizer.pad_token_id)
            for index, scores in zip(batch, scored):
                results[index] = scores
            if on_batch is not None:
                on_batch(len(batch))
        return results

    def next_token_log_probs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[torch.Tensor]:
        return _reply_log_probs(self.model, sequences, starts, self.tokenizer.pad_token_id)

    @contextlib.contextmanager
    def without_adapter(self) -> Iterator["HfModel"]:
        """Every LoRA layer switched off for the duration, whether ``model`` is the PEFT wrapper
        or the base model PEFT injected its layers into (which has no disable_adapter)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        was_disabled = [layer.disable_adapters for layer in layers]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield self
        finally:
            for layer, disabled in zip(layers, was_disabled):
                layer.enable_adapters(not disabled)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 16, desc: str = "embedding") -> torch.Tensor:
        """Mean last-layer hidden state of each text as a chat user turn, L2-normalised."""
        decoder = self.model.get_decoder()
        device = next(self.model.parameters()).device
        vectors = []
        with progress.bar(total=len(texts), desc=desc, unit="text") as bar:
            for begin in range(0, len(texts), batch_size):
                rows = [self.render([{"role": "user", "content": t}]) for t in texts[begin : begin + batch_size]]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, row in enumerate(rows):
                    ids[i, : len(row)] = torch.tensor(row)
                    mask[i, : len(row)] = 1
                hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
                weights = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)  # a spread model ends on its last GPU
                pooled = (hidden * weights).sum(1) / weights.sum(1)
                vectors.append(torch.nn.functional.normalize(pooled.float(), dim=-1).to(device))
                bar.update(len(rows))
        return torch.cat(vectors)


class HfBackend:
    """Generation by the HF loop on the model in memory."""

    name = "hf"
    needs_adapter_files = False

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def model(self, hf: HfModel, adapter: Path | None) -> HfModel:
        return hf

    def describe(self) -> BackendDescription:
        return BackendDescription(
            name=self.name, reason=self.reason,
            engine="tamperaudit's batched greedy loop on the transformers model (the one trained and scored)",
            extra_memory="none: the same model serves generation, multiple choice, KL and training",
        )
