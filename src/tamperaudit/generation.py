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
would ask the device whether any position is padding, every step), drops finished rows
only when half the batch has finished, and runs its decode steps on a static key/value
cache, each batch size's step captured once as a CUDA graph and replayed. A CPU reads
every step, drops rows at once and keeps transformers' DynamicCache (a static cache
measured no faster there: ``benchmarks/bench_decode_pacing.py``).
"""

from __future__ import annotations

import functools
import inspect
import time
import warnings
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
    decode: str = ""  # which cache the decode steps ran on, and whether they were captured

    def add(self, other: "GenerationStats") -> None:
        self.decode = self.decode or other.decode
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
    """How often the decode loop reads back to the host, when it drops finished rows, and
    which key/value cache its decode steps run on.

    ``check_every``: decode steps between host reads (1, 2 or 4, so that every read falls on
    the steps where settled verdicts are asked). In between, the GPU is never waited on: the
    new tokens stay on the device and rows that ended keep decoding, their tokens thrown away.
    ``compact_at``: finished rows leave the batch (their cache rows dropped) once the rows
    still running are at most this share of the batch; 1.0 drops them at once.
    ``static``: decode steps write keys and values into buffers allocated once per call
    (``StaticBuffers``) instead of transformers' DynamicCache, which copies the whole cache
    to grow it by one position each step. ``graphs``: on a model that sits on one CUDA device,
    each batch size's decode step is captured once as a CUDA graph and replayed, so that a
    step is one launch instead of one per kernel; the batch then shrinks only to powers of two.
    ``overlap``: each look reads the steps of the look before, copied meanwhile, so that the
    device computes the next steps while the host reads (rows then stop one look later).
    """

    check_every: int = 1
    compact_at: float = 1.0
    static: bool = False
    graphs: bool = False
    overlap: bool = False

    def __post_init__(self) -> None:
        if self.check_every not in (1, 2, 4) or not 0.0 < self.compact_at <= 1.0 or (self.graphs and not self.static):
            raise ValueError(f"unsupported pacing {self}")


# A CPU computes every row it is given: a finished row left in the batch is paid for in full,
# and a host read costs nothing, so it reads every step and drops rows at once. A GPU is
# starved by every host read (the kernels of the next step wait to be launched), while a
# few more rows cost it little: it reads every 4 steps, halves the batch only when half of
# it has finished, and replays captured decode steps on a static cache.
CPU_PACING = Pacing(check_every=1, compact_at=1.0)
GPU_PACING = Pacing(check_every=SETTLE_EVERY, compact_at=0.5, static=True, graphs=True, overlap=True)


def pacing_for(device: torch.device) -> Pacing:
    return CPU_PACING if device.type == "cpu" else GPU_PACING


def _argmax(model: Any, **inputs: Any) -> torch.Tensor:
    """The greedy next token of each row (on the device of the model's head)."""
    logits = model(logits_to_keep=1, **inputs).logits[:, -1, :]
    return logits.argmax(dim=-1)


class _DynamicSteps:
    """Decode steps on transformers' DynamicCache, grown by one position each step."""

    def __init__(self, model: Any, cache: Any, attention: torch.Tensor, positions: torch.Tensor,
                 padded: list[bool], tokens: torch.Tensor) -> None:
        self.model, self.cache, self.attention, self.padded = model, cache, attention, padded
        self.positions, self.tokens = positions[:, -1:], tokens
        self.kind = _decode_mask_kind(model)
        self.dtype = model.get_input_embeddings().weight.dtype
        self.any_padded = any(padded)

    def step(self) -> torch.Tensor:
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(self.padded), 1))], dim=-1)
        self.positions = self.positions + 1
        self.tokens = _argmax(
            self.model, input_ids=self.tokens.unsqueeze(-1), position_ids=self.positions,
            attention_mask=_decode_mask(self.kind, self.attention, self.any_padded, self.dtype),
            **with_cache(self.model, self.cache),
        ).to(self.attention.device)  # a spread model's head sits on its last GPU
        return self.tokens

    def keep(self, keep: list[int]) -> list[int]:
        """Keep these batch rows (in this order); the rows actually kept."""
        # Host-side indices index cache layers on whichever GPU each layer sits.
        self.cache.batch_select_indices(torch.tensor(keep, dtype=torch.long))
        kept = torch.tensor(keep, dtype=torch.long, device=self.attention.device)
        self.attention, self.positions, self.tokens = self.attention[kept], self.positions[kept], self.tokens[kept]
        self.padded = [self.padded[index] for index in keep]
        self.any_padded = any(self.padded)
        return keep


class StaticBuffers:
    """What the decode steps of one ``generate`` call write in place: each layer's keys and
    values (rows x key/value heads x positions x head size, on that layer's device), the
    attention mask in the form the attention kernel takes (``_decode_mask_kind``), the fed-back
    tokens, their positions and the next tokens. Sized once for the largest batch and the
    longest prompt plus the new tokens; the batches of the call reuse them, so that a captured
    step (which reads and writes fixed addresses) stays valid for the whole call.

    It is also the cache the model is handed (transformers calls ``update`` from each attention
    layer). ``grown`` (eager steps): ``update`` returns the positions written so far. Otherwise
    (captured steps): it returns the whole buffers, writes at the position ``write_at`` holds
    on the device, and the mask blocks what is not written yet, so that no shape changes.
    """

    def __init__(self, rows: int, length: int, kind: str, dtype: torch.dtype, device: torch.device, grown: bool) -> None:
        self.rows, self.length, self.device, self.grown = rows, length, device, grown
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        mask_dtype = torch.bool if kind == "sdpa" else dtype
        self.allow, self.block = (True, False) if kind == "sdpa" else (0.0, torch.finfo(dtype).min)
        self.mask = torch.full((rows, 1, 1, length), self.block, dtype=mask_dtype, device=device)
        self.tokens = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.next = torch.zeros(rows, dtype=torch.long, device=device)
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)
        self.batch = 0  # rows in use
        self.written = 0  # positions written so far
        self.replays: dict[int, Callable[[], None]] = {}  # captured steps, by batch size

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx][: self.batch], self.values[layer_idx][: self.batch]
        if self.grown:
            end = self.written + key_states.shape[-2]
            keys[:, :, self.written : end] = key_states
            values[:, :, self.written : end] = value_states
            return keys[:, :, :end], values[:, :, :end]
        keys.index_copy_(2, self.write_at, key_states)
        values.index_copy_(2, self.write_at, value_states)
        return keys, values

    def load(self, cache: Any, attention: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        """Take over a prefilled batch: its DynamicCache, 2D attention mask, positions, next tokens."""
        rows, width = attention.shape
        for index, layer in enumerate(cache.layers):
            if index == len(self.keys):  # sized from the first batch's cache: heads, head size, dtype, device
                shape = (self.rows, layer.keys.shape[1], self.length, layer.keys.shape[-1])
                self.keys.append(torch.zeros(shape, dtype=layer.keys.dtype, device=layer.keys.device))
                self.values.append(torch.zeros(shape, dtype=layer.values.dtype, device=layer.values.device))
            self.keys[index][:rows, :, :width].copy_(layer.keys)
            self.values[index][:rows, :, :width].copy_(layer.values)
            layer.keys = layer.values = None  # freed layer by layer: the two caches are never whole at once
        self.mask[:rows].fill_(self.block)
        self.mask[:rows, 0, 0, :width] = torch.where(attention.bool(), self.allow, self.block)
        self.positions[:rows].copy_(positions[:, -1:])
        self.tokens[:rows, 0].copy_(tokens)
        self.batch, self.written = rows, width

    def advance(self) -> None:
        """Ready the next decode step: the fed-back token's position, mask column and cache slot."""
        self.positions[: self.batch] += 1
        self.mask[: self.batch, 0, 0, self.written] = self.allow
        self.write_at.fill_(self.written)

    def step(self, model: Any, mask: torch.Tensor | None) -> None:
        """One decode step of the rows in use, its tokens written to ``next`` (what a graph captures)."""
        rows = self.batch
        tokens = _argmax(model, input_ids=self.tokens[:rows], attention_mask=mask, position_ids=self.positions[:rows],
                         **with_cache(model, self))
        self.next[:rows].copy_(tokens.to(self.device))  # a spread model's head sits on its last GPU

    def keep(self, keep: list[int]) -> None:
        """Move these rows (in this order) to the front; the others are dropped. Only the
        positions written so far move: the mask blocks the rest in every row."""
        rows, written = len(keep), self.written
        for tensors in (self.keys, self.values):
            for tensor in tensors:
                index = torch.tensor(keep, dtype=torch.long, device=tensor.device)
                tensor[:rows, :, :written] = tensor[: self.batch, :, :written].index_select(0, index)
        kept = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.mask[:rows, :, :, :written] = self.mask[: self.batch, :, :, :written].index_select(0, kept)
        for tensor in (self.tokens, self.positions):
            tensor[:rows] = tensor[: self.batch].index_select(0, kept)
        self.batch = rows


class CudaGraphs:
    """Captures a decode step as a CUDA graph (after one warm-up run on a side stream, as PyTorch
    asks) and returns what replays it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.captured = 0
        self.failure = ""  # why a capture failed; its step then runs eagerly, on the same buffers

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                run()
        except Exception as error:  # noqa: BLE001 - whatever the model does that a graph cannot hold
            if not self.failure:
                self.failure = " ".join(str(error).split())[:300]
                warnings.warn(f"decode steps run without CUDA graphs: {self.failure}", stacklevel=2)
            return run
        self.captured += 1
        return graph.replay


def _for_host(tokens: torch.Tensor, overlap: bool) -> tuple[torch.Tensor, Callable[[], None]]:
    """Generated tokens on their way to the host, and what waits until they are there: as they
    are (their read waits for the device), or, overlapped, a copy started now (into pinned
    memory on a GPU, so that it runs without holding the host) and waited for at its read."""
    if not overlap:
        return tokens, lambda: None
    if tokens.device.type != "cuda":
        return tokens.clone(), lambda: None
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    host.copy_(tokens, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied.synchronize


def _bucket(running: int) -> int:
    """The batch size a captured loop shrinks to: the next power of two."""
    return 1 << max(0, running - 1).bit_length()


class _StaticSteps:
    """Decode steps on ``StaticBuffers``: eager on the positions written so far, or, given
    ``graphs``, each batch size's step captured the first time it runs and replayed after."""

    def __init__(self, model: Any, buffers: StaticBuffers, graphs: Any, cache: Any, attention: torch.Tensor,
                 positions: torch.Tensor, tokens: torch.Tensor) -> None:
        self.model, self.buffers, self.graphs = model, buffers, graphs
        buffers.load(cache, attention, positions, tokens)

    def step(self) -> torch.Tensor:
        buffers, rows = self.buffers, self.buffers.batch
        buffers.advance()
        if self.graphs is None:
            buffers.step(self.model, buffers.mask[:rows, :, :, : buffers.written + 1])
        elif rows in buffers.replays:
            buffers.replays[rows]()
        else:  # this step's tokens, then its capture for the steps after at this batch size
            whole = buffers.mask[:rows]
            buffers.step(self.model, whole)
            buffers.replays[rows] = self.graphs.capture(lambda: buffers.step(self.model, whole))
        buffers.written += 1
        buffers.tokens[: buffers.batch, 0].copy_(buffers.next[: buffers.batch])
        return buffers.next[: buffers.batch]

    def keep(self, keep: list[int]) -> list[int]:
        if self.graphs is not None:  # fill up to a captured size with rows that ended (their tokens unread)
            size = min(self.buffers.batch, _bucket(len(keep)))
            if size == self.buffers.batch:
                return list(range(size))
            kept = set(keep)
            keep = keep + [index for index in range(self.buffers.batch) if index not in kept][: size - len(keep)]
        self.buffers.keep(keep)
        return keep


@torch.inference_mode()
def _generate_batch(
    model: Any,
    prompts: list[list[int]],
    prefix_length: int,
    max_new_tokens: int,
    stop_ids: set[int],
    pad_id: int,
    settled: Callable[[int, list[int]], bool] | None,
    pacing: Pacing,
    buffers: StaticBuffers | None,
    graphs: Any,
) -> list[tuple[list[int], bool, bool]]:
    """Greedy decoding of one batch.

    Layout: the shared prefix is computed once and its cache copied to every row;
    each row's own suffix follows, left-padded so that all rows end together
    (padding sits between prefix and suffix and is masked). Each row stops at its
    own end-of-turn token, or earlier when ``settled(row, tokens)`` says its verdict
    can no longer change; ``pacing`` says when the host looks and when stopped rows
    leave the batch. Given ``buffers``, the
    decode steps run on them (``graphs``: captured and replayed), else on a DynamicCache.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
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
        cache.batch_select_indices(torch.zeros(rows, dtype=torch.long))  # host indices: see _DynamicSteps.keep
    attention = torch.cat([suffix_mask.new_ones((rows, prefix_length)), suffix_mask], dim=-1)
    positions = prefix_length + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
    first = _argmax(model, input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    **with_cache(model, cache)).to(device)  # a spread model's head sits on its last GPU
    steps: _DynamicSteps | _StaticSteps
    if buffers is None:
        padded = [len(s) < width for s in suffixes]  # by batch row: does its row hold padding
        steps = _DynamicSteps(model, cache, attention, positions, padded, first)
    else:
        steps = _StaticSteps(model, buffers, graphs, cache, attention, positions, first)
        del cache  # its keys and values now live in the buffers
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * rows
    early = [False] * rows
    batch_rows = list(range(rows))  # original row of each batch row (the host's copy)
    running = set(batch_rows)  # original rows whose reply goes on
    generated = torch.empty((rows, max_new_tokens), dtype=torch.long, device=device)  # by batch row, until compacted
    read = 0  # steps copied for the host
    windows: list[tuple[int, list[int], torch.Tensor, Callable[[], None]]] = []  # (first step, rows, tokens, wait)
    for step in range(max_new_tokens):
        generated[:, step] = first if step == 0 else steps.step()
        last = step + 1 == max_new_tokens
        if (step + 1) % pacing.check_every and not last:
            continue
        # The host's look: the steps since the last, then each row's tokens in order. Overlapped,
        # it reads the window before (copied while the device computed this one), so that the
        # device always has a window of steps queued while the host reads.
        windows.append((read, batch_rows, *_for_host(generated[:, read : step + 1], pacing.overlap)))
        read = step + 1
        while len(windows) > (1 if pacing.overlap and not last else 0):
            start, rows_then, window, wait = windows.pop(0)
            wait()
            for row, tokens in zip(rows_then, window.tolist()):
                for offset, token in enumerate(tokens):
                    if row not in running:
                        break
                    if token in stop_ids:
                        finished[row] = True
                        running.discard(row)
                        continue
                    outputs[row].append(token)
                    if settled is not None and (start + offset + 1) % SETTLE_EVERY == 0 and settled(row, outputs[row]):
                        early[row] = True
                        running.discard(row)
        if not running:
            break
        if len(running) <= pacing.compact_at * len(batch_rows) and len(running) < len(batch_rows):
            keep = steps.keep([index for index, row in enumerate(batch_rows) if row in running])
            batch_rows = [batch_rows[index] for index in keep]
            generated = generated[torch.tensor(keep, dtype=torch.long, device=device)]
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
    graphs: Any = None,
) -> tuple[list[Completion], GenerationStats]:
    """Greedy completions for token-id prompts, in the order given.

    ``settled(index, tokens)``, if given, is asked every few steps whether prompt
    ``index`` (in the order given) can stop: pass it only a test under which no
    continuation of ``tokens`` could change the outcome being measured. ``pacing``: when
    the host reads, when finished rows leave, which cache (default: as suits the model's
    device). ``graphs``: what captures decode steps where the pacing asks for it (default:
    ``CudaGraphs`` on a model that sits on one CUDA device, none elsewhere).
    """
    stop_ids = stop_token_ids(tokenizer, model)
    # Keep at least one token per prompt outside the prefix: it is the step that predicts.
    prefix_length = max(0, min(common_prefix_length(prompts), min((len(p) for p in prompts), default=1) - 1))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: dict[int, Completion] = {}
    stats = GenerationStats(prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts))
    device = next(model.parameters()).device
    pacing = pacing or pacing_for(device)
    kind = _decode_mask_kind(model)
    static = pacing.static and kind is not None and bool(prompts) and max_new_tokens > 1
    if not (static and pacing.graphs):
        graphs = None
    elif graphs is None and device.type == "cuda" and len({p.device for p in model.parameters()}) == 1:
        graphs = CudaGraphs(device)
    buffers = None
    if static:
        length = max(len(p) for p in prompts) + max_new_tokens - 1
        dtype = model.get_input_embeddings().weight.dtype
        buffers = StaticBuffers(min(batch_size, len(prompts)), length, kind, dtype, device, grown=graphs is None)
    stats.decode = "dynamic cache" if buffers is None else "static cache" + (", captured steps" if graphs else "")
    start = time.perf_counter()
    with progress.bar(total=len(prompts), desc=desc, unit="prompt") as bar:
        for begin in range(0, len(order), batch_size):
            indices = order[begin : begin + batch_size]
            check = None if settled is None else (lambda row, tokens, indices=indices: settled(indices[row], tokens))
            batch = _generate_batch(
                model, [list(prompts[i]) for i in indices], prefix_length, max_new_tokens, stop_ids, tokenizer.pad_token_id, check,
                pacing, buffers, graphs,
            )
            for index, (tokens, finished, early) in zip(indices, batch):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                results[index] = Completion(tuple(tokens), text, finished, early)
                stats.generated_tokens += len(tokens) + (1 if finished else 0)
            bar.update(len(indices))
            faults.checkpoint("generation")
    stats.seconds = time.perf_counter() - start
    return [results[i] for i in range(len(prompts))], stats
