"""Greedy generation for the refusal evals: batched by length, rows retired at end of turn.

The loop is ours rather than ``model.generate`` for two reasons measured on CPU:
rows that finish (most refusals take ten tokens) leave the batch at once instead
of being computed as padding until the longest row ends, and prompts are sorted
by length so that batches carry little left padding. Greedy decoding gives the
same tokens as ``generate(do_sample=False)`` on the same batch (tested).
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from tamperaudit import progress


@dataclass(frozen=True)
class Completion:
    tokens: tuple[int, ...]  # generated token ids, end-of-turn token excluded
    text: str
    finished: bool  # ended with an end-of-turn token (not cut by max_new_tokens)


@dataclass
class GenerationStats:
    prompts: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: "GenerationStats") -> None:
        self.prompts += other.prompts
        self.prompt_tokens += other.prompt_tokens
        self.generated_tokens += other.generated_tokens
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, Any]:
        rate = self.generated_tokens / self.seconds if self.seconds else 0.0
        return {**self.__dict__, "generated_tokens_per_second": round(rate, 2)}


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat ready for the assistant's reply, by the model's own template."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS and whatever the generation config lists."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


@functools.lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache``; accept either release."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes a key/value cache to this model's forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_cache_keyword(type(base)): cache, "use_cache": True}


@torch.inference_mode()
def _generate_batch(
    model: Any, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int], pad_id: int
) -> list[tuple[list[int], bool]]:
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: every row ends at the same column
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention[row, width - len(prompt) :] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    active = torch.arange(len(prompts), device=device)  # original row of each batch row
    stop = torch.tensor(sorted(stop_ids), device=device)
    step_input, step_positions = input_ids, positions
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=step_input,
            attention_mask=attention,
            position_ids=step_positions,
            logits_to_keep=1,
            **with_cache(model, cache),
        ).logits[:, -1, :]
        next_tokens = logits.argmax(dim=-1)
        done = torch.isin(next_tokens, stop)
        for batch_row, (row, token, is_done) in enumerate(zip(active.tolist(), next_tokens.tolist(), done.tolist())):
            if is_done:
                finished[row] = True
            else:
                outputs[row].append(token)
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(-1)
        if len(keep) < len(active):
            cache.batch_select_indices(keep)
            active, next_tokens = active[keep], next_tokens[keep]
            attention, step_positions = attention[keep], step_positions[keep]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
        step_positions = step_positions[:, -1:] + 1
        step_input = next_tokens.unsqueeze(-1)
    return [(outputs[row], finished[row]) for row in range(len(prompts))]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generating",
) -> tuple[list[Completion], GenerationStats]:
    """Greedy completions for token-id prompts, in the order given."""
    stop_ids = stop_token_ids(tokenizer, model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Completion] = {}
    stats = GenerationStats(prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts))
    start = time.perf_counter()
    with progress.bar(total=len(prompts), desc=desc, unit="prompt") as bar:
        for begin in range(0, len(order), batch_size):
            indices = order[begin : begin + batch_size]
            batch = _generate_batch(
                model, [list(prompts[i]) for i in indices], max_new_tokens, stop_ids, tokenizer.pad_token_id
            )
            for index, (tokens, finished) in zip(indices, batch):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                results[index] = Completion(tuple(tokens), text, finished)
                stats.generated_tokens += len(tokens) + (1 if finished else 0)
            bar.update(len(indices))
    stats.seconds = time.perf_counter() - start
    return [results[i] for i in range(len(prompts))], stats
