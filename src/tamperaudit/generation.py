"""Greedy generation for the refusal evals: batched by length, rows retired at end of turn.

The loop is ours rather than ``model.generate`` for three reasons measured on CPU:
rows that finish (most refusals take ten tokens) leave the batch at once instead
of being computed as padding until the longest row ends; the prefix every prompt
shares (the chat template's system block, or an attack's system prompt) is
computed once per batch instead of once per row; and prompts are sorted by length
so that batches carry little padding. Greedy decoding gives the
same tokens as ``generate(do_sample=False)`` on the same batch (tested).

On a GPU the loop keeps the device busy (``Pacing``, issue 29): it reads back to the
host only every few steps, builds each decode step's attention mask itself (transformers
would ask the device whether any position is padding, every step), and drops finished
rows only when half the batch has finished. A CPU reads every step and drops rows at once.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from tamperaudit import faults, progress
from tamperaudit.records import GenerationThroughput


@dataclass(frozen=True)
class Completion:
    tokens: tuple[int, ...]  # generated token ids, end-of-turn token excluded
    text: str
    finished: bool  # ended with an end-of-turn token (not cut by max_new_tokens)
    settled: bool = False  # stopped early: its verdict could no longer change (see generate)


SETTLE_EVERY = 4  # decode steps between checks of whether a row's verdict is settled


def cut_at_settled(
    tokens: list[int], finished: bool, settled: Callable[[list[int]], bool] | None
) -> tuple[list[int], bool, bool]:
    """Where the batched loop would have stopped a whole completion early: (tokens, finished, settled).

    The loop asks ``settled`` after every SETTLE_EVERY-th generated token of a row still
    running, and stops the row at the first yes; an engine that cannot stop rows on
    our test (vLLM) is cut here afterwards, so both record the same tokens.
    """
    if settled is not None:
        for length in range(SETTLE_EVERY, len(tokens) + 1, SETTLE_EVERY):
            if settled(tokens[:length]):
                return tokens[:length], False, True
    return tokens, finished, False


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

    def throughput(self, backend: str) -> GenerationThroughput:
        """The stage's generation speed, as recorded in its metrics."""
        rate = self.generated_tokens / self.seconds if self.seconds else 0.0
        return GenerationThroughput(
            prompts=self.prompts, prompt_tokens=self.prompt_tokens, generated_tokens=self.generated_tokens,
            seconds=self.seconds, generated_tokens_per_second=round(rate, 2), backend=backend,
        )


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


def _decode_mask_kind(model: Any) -> str | None:
    """How the decode steps can be handed their attention mask ready-made: 'sdpa' (a boolean
    mask, or none where no row is padded) or 'eager' (an additive one), exactly the masks
    transformers would build for one new token; None where it must build them itself (other
    attention kernels, sliding-window layers).

    transformers builds a decode step's mask by first asking whether any position is
    padding, a read from the device that stalls a GPU every step; a 4D mask is used as given.
    """
    from tamperaudit.models import text_config

    config = text_config(model.config)
    kind = getattr(model.config, "_attn_implementation", None)
    layer_types = getattr(config, "layer_types", None)
    windowed = (any(t != "full_attention" for t in layer_types) if layer_types else
                getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True))
    return kind if kind in ("sdpa", "eager") and not windowed else None


def _decode_mask(kind: str | None, attention: torch.Tensor, padded: bool, dtype: torch.dtype) -> torch.Tensor | None:
    """The attention mask for a decode step over ``attention`` (rows x positions, 1 = attend)."""
    if kind is None:
        return attention
    if kind == "sdpa":
        return attention.bool()[:, None, None, :] if padded else None
    zero = torch.zeros((), dtype=dtype, device=attention.device)
    return torch.where(attention.bool(), zero, torch.finfo(dtype).min)[:, None, None, :]


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share (the chat template's system block)."""
    if not prompts:
        return 0
    first, length = prompts[0], min(len(p) for p in prompts)
    for other in prompts[1:]:
        while length and list(other[:length]) != list(first[:length]):
            length -= 1
    return length


@dataclass(frozen=True)
class Pacing:
    """How often the decode loop reads back to the host, and when it drops finished rows.

    ``check_every``: decode steps between host reads (1, 2 or 4, so that every read falls on
    the steps where settled verdicts are asked). In between, the GPU is never waited on: the
    new tokens stay on the device and rows that ended keep decoding, their tokens thrown away.
    ``compact_at``: finished rows leave the batch (their cache rows dropped) once the rows
    still running are at most this share of the batch; 1.0 drops them at once.
    """

    check_every: int = 1
    compact_at: float = 1.0

    def __post_init__(self) -> None:
        if self.check_every not in (1, 2, 4) or not 0.0 < self.compact_at <= 1.0:
            raise ValueError(f"unsupported pacing {self}")


# A CPU computes every row it is given: a finished row left in the batch is paid for in full,
# and a host read costs nothing, so it reads every step and drops rows at once. A GPU is
# starved by every host read (the kernels of the next step wait to be launched), while a
# few more rows cost it little: it reads every 4 steps and halves the batch only when half of
# it has finished.
CPU_PACING = Pacing(check_every=1, compact_at=1.0)
GPU_PACING = Pacing(check_every=SETTLE_EVERY, compact_at=0.5)


def pacing_for(device: torch.device) -> Pacing:
    return CPU_PACING if device.type == "cpu" else GPU_PACING


@torch.inference_mode()
def _generate_batch(
    model: Any,
    prompts: list[list[int]],
    prefix_length: int,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    settled: Callable[[int, list[int]], bool] | None = None,
    pacing: Pacing | None = None,
) -> list[tuple[list[int], bool, bool]]:
    """Greedy decoding of one batch.

    Layout: the shared prefix is computed once and its cache copied to every row;
    each row's own suffix follows, left-padded so that all rows end together
    (padding sits between prefix and suffix and is masked). Each row stops at its
    own end-of-turn token, or earlier when ``settled(row, tokens)`` says its verdict
    can no longer change; ``pacing`` says when the host looks and when stopped rows
    leave the batch (by default, as suits the model's device).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    pacing = pacing or pacing_for(device)
    rows = len(prompts)
    prefix = torch.tensor(prompts[0][:prefix_length], device=device).unsqueeze(0)
    suffixes = [p[prefix_length:] for p in prompts]
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        input_ids[row, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        suffix_mask[row, width - len(suffix) :] = 1
    input_ids, suffix_mask = input_ids.to(device), suffix_mask.to(device)
    cache = DynamicCache()
    if prefix_length:
        model(input_ids=prefix, logits_to_keep=1, **with_cache(model, cache))
        cache.batch_select_indices(torch.zeros(rows, dtype=torch.long))  # host indices: see below
    attention = torch.cat([suffix_mask.new_ones((rows, prefix_length)), suffix_mask], dim=-1)
    positions = prefix_length + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
    mask_kind = _decode_mask_kind(model)
    dtype = model.get_input_embeddings().weight.dtype
    padded = [len(s) < width for s in suffixes]  # by batch row: does its row hold padding
    any_padded = any(padded)
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * rows
    early = [False] * rows
    batch_rows = list(range(rows))  # original row of each batch row (the host's copy)
    running = set(batch_rows)  # original rows whose reply goes on
    generated = torch.empty((rows, max_new_tokens), dtype=torch.long, device=device)  # by batch row, until compacted
    read = 0  # steps the host has read
    step_input, step_positions = input_ids, positions
    for step in range(max_new_tokens):
        logits = model(
            input_ids=step_input,
            attention_mask=attention if step == 0 else _decode_mask(mask_kind, attention, any_padded, dtype),
            position_ids=step_positions,
            logits_to_keep=1,
            **with_cache(model, cache),
        ).logits[:, -1, :]
        next_tokens = logits.argmax(dim=-1).to(device)  # a spread model's head sits on its last GPU
        generated[:, step] = next_tokens
        attention = torch.cat([attention, attention.new_ones((len(batch_rows), 1))], dim=-1)
        step_positions = step_positions[:, -1:] + 1
        step_input = next_tokens.unsqueeze(-1)
        if (step + 1) % pacing.check_every and step + 1 < max_new_tokens:
            continue
        # The host's look: one read of the steps since the last, then each row's tokens in order.
        for row, tokens in zip(batch_rows, generated[:, read : step + 1].tolist()):
            for offset, token in enumerate(tokens):
                if row not in running:
                    break
                if token in stop_ids:
                    finished[row] = True
                    running.discard(row)
                    continue
                outputs[row].append(token)
                if settled is not None and (read + offset + 1) % SETTLE_EVERY == 0 and settled(row, outputs[row]):
                    early[row] = True
                    running.discard(row)
        read = step + 1
        if not running:
            break
        if len(running) <= pacing.compact_at * len(batch_rows) and len(running) < len(batch_rows):
            keep = [index for index, row in enumerate(batch_rows) if row in running]
            # Host-side indices index cache layers on whichever GPU each layer sits.
            cache.batch_select_indices(torch.tensor(keep, dtype=torch.long))
            kept = torch.tensor(keep, dtype=torch.long, device=device)
            batch_rows = [batch_rows[index] for index in keep]
            padded = [padded[index] for index in keep]
            any_padded = any(padded)
            attention, step_positions, step_input = attention[kept], step_positions[kept], step_input[kept]
            generated = generated[kept]
    return [(outputs[row], finished[row], early[row]) for row in range(rows)]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    desc: str = "generating",
    settled: Callable[[int, list[int]], bool] | None = None,
    pacing: Pacing | None = None,
) -> tuple[list[Completion], GenerationStats]:
    """Greedy completions for token-id prompts, in the order given.

    ``settled(index, tokens)``, if given, is asked every few steps whether prompt
    ``index`` (in the order given) can stop: pass it only a test under which no
    continuation of ``tokens`` could change the outcome being measured. ``pacing``: when
    the host reads and finished rows leave (default: as suits the model's device).
    """
    stop_ids = stop_token_ids(tokenizer, model)
    # Keep at least one token per prompt outside the prefix: it is the step that predicts.
    prefix_length = max(0, min(common_prefix_length(prompts), min((len(p) for p in prompts), default=1) - 1))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Completion] = {}
    stats = GenerationStats(prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts))
    start = time.perf_counter()
    with progress.bar(total=len(prompts), desc=desc, unit="prompt") as bar:
        for begin in range(0, len(order), batch_size):
            indices = order[begin : begin + batch_size]
            check = None if settled is None else (lambda row, tokens, indices=indices: settled(indices[row], tokens))
            batch = _generate_batch(
                model, [list(prompts[i]) for i in indices], prefix_length, max_new_tokens, stop_ids, tokenizer.pad_token_id, check,
                pacing,
            )
            for index, (tokens, finished, early) in zip(indices, batch):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                results[index] = Completion(tuple(tokens), text, finished, early)
                stats.generated_tokens += len(tokens) + (1 if finished else 0)
            bar.update(len(indices))
            faults.checkpoint("generation")
    stats.seconds = time.perf_counter() - start
    return [results[i] for i in range(len(prompts))], stats
