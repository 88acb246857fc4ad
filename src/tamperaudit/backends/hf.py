"""The HF backend: tamperaudit's batched greedy loop (generation.py) on the model in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from tamperaudit.generation import Completion, GenerationStats, generate
from tamperaudit.records import BackendDescription


class HfGenerator:
    name = "hf"
    needs_adapter_files = False

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        batch_size: int,
        desc: str = "generating",
        settled: Callable[[int, list[int]], bool] | None = None,
        adapter: Path | None = None,
    ) -> tuple[list[Completion], GenerationStats]:
        return generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc, settled=settled)

    def describe(self) -> BackendDescription:
        return BackendDescription(
            name=self.name, reason=self.reason,
            engine="tamperaudit's batched greedy loop on the transformers model (the one trained and scored)",
            extra_memory="none: the same model serves generation, multiple choice, KL and training",
        )
