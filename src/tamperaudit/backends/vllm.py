"""The vLLM engine: the base model served once per process, each adapter a LoRARequest.

Nothing is merged: vLLM applies the budget's LoRA weights beside the base weights,
so no full copy of attacked weights is ever written or held. The engine is
created at the first generation and reused for every budget, arm and mode of the
run; its LoRA slots are sized to what the pipeline evaluates at once (one
adapter) and its rank to the largest rank the run trains (vLLM allocates LoRA
buffers at that rank). Greedy decoding, the same token-id prompts and stop tokens
as the HF loop; the early stops are applied to whole completions afterwards, at
the check points the HF loop uses, so both backends record the same tokens.

vLLM starts worker processes with the spawn method: a script that audits through
it must guard its entry point with ``if __name__ == "__main__":`` (the
``tamperaudit`` command and ``python -m tamperaudit`` do).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from tamperaudit import progress
from tamperaudit.backends import ChoiceRequest, Message, Settled
from tamperaudit.backends.hf import HfModel
from tamperaudit.errors import UserError, one_line
from tamperaudit.generation import Completion, GenerationStats, cut_at_settled, stop_token_ids
from tamperaudit.records import BackendDescription

# The LoRA ranks vLLM accepts for max_lora_rank (vllm.config.lora).
ENGINE_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# KV-cache memory of a CPU engine (vLLM's CPU backend needs it given); 2 GiB holds
# about 20,000 tokens of the default model's cache in float32.
CPU_KV_CACHE_BYTES = 2 * 1024**3


def engine_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``."""
    for allowed in ENGINE_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise UserError(f"LoRA rank {rank} is above vLLM's largest ({ENGINE_LORA_RANKS[-1]}); use eval.backend=hf")


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


class VllmModel:
    """A model state served by vLLM for generation: the engine's base weights with ``adapter``
    applied (None: unattacked). Choice scoring and next-token log-probabilities need the whole
    vocabulary's log-probabilities, so the transformers model (carrying the same adapter) gives them."""

    def __init__(self, hf: HfModel, backend: "VllmBackend", adapter: Path | None) -> None:
        self.hf = hf
        self.backend = backend
        self.adapter = adapter

    @property
    def engine(self) -> str:
        """vllm, or hf once an engine chosen by 'auto' could not start."""
        return "hf" if self.backend.failed is not None else "vllm"

    def render(self, messages: Sequence[Message]) -> list[int]:
        return self.hf.render(messages)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.hf.decode(tokens)

    def split_reply(self, text: str) -> tuple[str | None, str, bool]:
        return self.hf.split_reply(text)

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, desc: str = "generating",
        settled: Settled | None = None,
    ) -> tuple[list[Completion], GenerationStats]:
        return self.backend.generate(self.hf, prompts, max_new_tokens, desc, settled, self.adapter)

    def choice_log_probs(
        self, requests: Sequence[ChoiceRequest], batch_size: int, on_batch: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        return self.hf.choice_log_probs(requests, batch_size, on_batch)

    def next_token_log_probs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[torch.Tensor]:
        return self.hf.next_token_log_probs(sequences, starts)

    @contextlib.contextmanager
    def without_adapter(self) -> Iterator["VllmModel"]:
        with self.hf.without_adapter() as base:
            yield VllmModel(base, self.backend, None)


class VllmBackend:
    """One vLLM engine per process, serving every budget's adapter in turn."""

    name = "vllm"
    needs_adapter_files = True

    def __init__(
        self,
        reason: str,
        folder: Path,
        dtype: str,
        lora_rank: int,
        tensor_parallel_size: int,
        max_num_seqs: int,
        max_model_len: int,
        memory_fraction: float,
        device_type: str,
        fallback: bool = False,
    ) -> None:
        self.reason = reason
        self.fallback = fallback  # chosen by 'auto': an engine that fails to start gives way to the HF loop
        self.failed: str | None = None  # why the engine could not start, once it could not
        self.folder = folder
        self.dtype = dtype
        self.lora_rank = engine_lora_rank(lora_rank)
        self.tensor_parallel_size = tensor_parallel_size
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.memory_fraction = memory_fraction
        self.device_type = device_type
        self._llm: Any = None
        self._lora_ids: dict[tuple[str, int], int] = {}
        self.engine_seconds: float | None = None

    def _engine(self) -> Any:
        if self._llm is not None:
            return self._llm
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its INFO and WARNING lines drown the progress bars
        from vllm import LLM

        options: dict[str, Any] = {
            "model": str(self.folder),
            "tokenizer": str(self.folder),
            "dtype": self.dtype,
            "trust_remote_code": False,
            "enable_lora": True,
            "max_lora_rank": self.lora_rank,
            "max_loras": 1,  # the pipeline measures one budget's adapter at a time
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_num_seqs": self.max_num_seqs,
            "max_model_len": self.max_model_len,
            "seed": 0,
        }
        if self.device_type == "cuda":
            options["gpu_memory_utilization"] = self.memory_fraction
        else:
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            options["enforce_eager"] = True  # compiling graphs takes minutes on a CPU and gains little there
        started = time.perf_counter()
        with progress.spinner(f"starting the vLLM engine on {self.folder.name} ({self.dtype})"):
            try:
                self._llm = LLM(**options)
            except Exception as error:  # noqa: BLE001 - vLLM's start fails in many ways (memory, length, kernels)
                why = one_line(error)
                if not self.fallback:
                    raise UserError(f"the vLLM engine could not start ({why}); use eval.backend=hf") from None
                self.failed = why
                progress.warn(f"vLLM could not start ({why}); generating with the HF loop instead")
                return None
        self.engine_seconds = time.perf_counter() - started
        return self._llm

    def _lora_request(self, adapter: Path | None) -> Any:
        """One LoRARequest per adapter file version: a budget's adapter written later at the same
        path gets a new id, so vLLM never serves a stale adapter from its cache."""
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        weights = adapter / "adapter_model.safetensors"
        if not weights.is_file():
            raise UserError(f"{adapter}: no adapter_model.safetensors for vLLM to load")
        rank = int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"])
        if rank > self.lora_rank:
            raise UserError(f"{adapter}: LoRA rank {rank} is above the engine's {self.lora_rank}; use eval.backend=hf")
        key = (str(adapter.resolve()), weights.stat().st_mtime_ns)
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        number = self._lora_ids[key]
        return LoRARequest(f"adapter-{number}", number, str(adapter))

    def model(self, hf: HfModel, adapter: Path | None) -> VllmModel:
        return VllmModel(hf, self, adapter)

    def generate(
        self,
        hf: HfModel,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        desc: str = "generating",
        settled: Settled | None = None,
        adapter: Path | None = None,
    ) -> tuple[list[Completion], GenerationStats]:
        """Greedy completions of the prompts with ``adapter`` applied (None: the base), cut where
        the HF loop's early stops would have stopped them."""
        if self.failed is not None or self._engine() is None:  # 'auto' fell back: the HF loop generates
            return hf.generate(prompts, max_new_tokens, self.max_num_seqs, desc, settled)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self._engine()
        stops = stop_token_ids(hf.tokenizer, hf.model)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=sorted(stops), skip_special_tokens=True)
        longest = max((len(p) for p in prompts), default=0)
        if longest + max_new_tokens > self.max_model_len:
            raise UserError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new ones is over the vLLM engine's "
                f"eval.vllm_max_model_len={self.max_model_len}; raise it"
            )
        stats = GenerationStats(prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts))
        progress.note(f"{desc}: {len(prompts)} prompts through vLLM")
        started = time.perf_counter()
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            lora_request=self._lora_request(adapter),
            use_tqdm=not progress.is_quiet(),
        )
        stats.seconds = time.perf_counter() - started
        completions = []
        for index, output in enumerate(outputs):
            sequence = output.outputs[0]
            tokens = list(sequence.token_ids)
            stats.generated_tokens += len(tokens)
            finished = sequence.finish_reason == "stop"
            if finished and tokens and tokens[-1] in stops:
                tokens.pop()  # the end-of-turn token is not part of the reply (as in the HF loop)
            check = None if settled is None else (lambda row_tokens, index=index: settled(index, row_tokens))
            tokens, finished, early = cut_at_settled(tokens, finished, check)
            completions.append(Completion(tuple(tokens), hf.decode(tokens), finished, early))
        return completions, stats

    def describe(self) -> BackendDescription:
        if self.failed is not None:
            return BackendDescription(
                name="hf", reason=f"{self.reason}; but the vLLM engine could not start ({self.failed}), so the HF loop "
                "generated", engine="tamperaudit's batched greedy loop on the transformers model",
                extra_memory="none: the same model serves generation, multiple choice, KL and training",
            )
        import vllm

        weights = _weight_bytes(self.folder)
        cache = (
            f"{100 * self.memory_fraction:.0f}% of GPU memory for its weights and KV cache"
            if self.device_type == "cuda"
            else f"{CPU_KV_CACHE_BYTES / 1024**3:.0f} GiB of KV cache"
        )
        return BackendDescription(
            name=self.name,
            reason=self.reason,
            engine=(
                f"vLLM {vllm.__version__}, {self.dtype}, LoRA rank up to {self.lora_rank}, 1 adapter at a time "
                f"(never merged), tensor parallel {self.tensor_parallel_size}, up to {self.max_num_seqs} sequences"
            ),
            extra_memory=(
                f"a second copy of the base weights ({weights / 1e9:.2f} GB on disk) and {cache}, beside the "
                "transformers model that is trained and scores multiple choice and KL"
            ),
            engine_start_seconds=self.engine_seconds,
        )
