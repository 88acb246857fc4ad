"""Stand-ins for tests and checks: tiny random chat models built from a config (nothing
downloaded), and a scripted ``LanguageModel`` for the evals.

Random weights say nothing about refusals, only that every path runs; the tests
and ``benchmarks/gpu_check.py`` build their models here so they build the same one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


# Settings that make an audit of the tiny model take seconds (precision left to the caller).
TINY_AUDIT_SETTINGS = [
    "--set", "eval.harmful_limit=6",
    "--set", "eval.benign_limit=4",
    "--set", "eval.capability_limit=6",
    "--set", "eval.kl_limit=3",
    "--set", "eval.max_new_tokens=6",
    "--set", "eval.kl_tokens=5",
    "--set", "eval.batch_size=4",
    "--set", "attack.batch_size=2",
    "--set", "attack.max_length=4096",
]

CHATML = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


# A zoo of chat templates that behave like each family's, written from their documented
# behaviour (issue 28): where the system prompt goes, which tokens end a turn, where the BOS
# token is written, whether turns must alternate, and a thinking switch.
_ALTERNATE = ("{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}")


@dataclass(frozen=True)
class Family:
    """A tiny model's tokenizer and template, like one model family's."""

    name: str
    template: str
    specials: tuple[str, ...]  # special tokens, the pad token first
    eos: str  # the tokenizer's end-of-sequence token
    bos: str | None = None  # the tokenizer's BOS token (and its own encoder adds it, as Llama's does)
    stop: tuple[str, ...] = ()  # more end-of-turn tokens, listed in the generation config
    added: tuple[str, ...] = ()  # ordinary added tokens (<think>, </think>)
    multimodal: bool = False  # a Gemma-3-style config with its text settings under text_config


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("chatml", CHATML, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    Family(
        "llama2",
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{%- set turns = messages[1:] %}"
        "{%- else %}{%- set system = '' %}{%- set turns = messages %}{%- endif %}"
        "{%- for m in turns %}{%- if m['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (system if loop.first else '') + m['content'] + ' [/INST]' }}"
        "{%- else %}{{ ' ' + m['content'] + ' ' + eos_token }}{%- endif %}{%- endfor %}",
        ("<unk>", "<s>", "</s>"), "</s>", bos="<s>",
    ),
    Family(
        "llama3",
        "{{ bos_token }}{%- for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}",
        ("<|finetune_pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
         "<|eot_id|>"), "<|end_of_text|>", bos="<|begin_of_text|>", stop=("<|eot_id|>",),
    ),
    Family(
        "gemma",
        "{{ bos_token }}{%- if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{%- endif %}"
        "{%- for m in messages %}" + _ALTERNATE +
        "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}",
        ("<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<eos>", bos="<bos>", stop=("<end_of_turn>",),
    ),
    Family(
        "mistral",
        "{{ bos_token }}{%- for m in messages %}"
        "{%- if m['role'] == 'system' %}{{ raise_exception('Only user and assistant roles are supported!') }}{%- endif %}"
        + _ALTERNATE +
        "{%- if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{%- else %}{{ m['content'] + eos_token }}"
        "{%- endif %}{%- endfor %}",
        ("<unk>", "<s>", "</s>"), "</s>", bos="<s>",
    ),
    Family(
        "phi3",
        "{%- for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}",
        ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|endoftext|>", stop=("<|end|>",),
    ),
    Family(
        "thinking",
        "{%- for m in messages %}{%- if m['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' + ('<think>\\n\\n</think>\\n\\n' if loop.last else '') + m['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
        "{%- endif %}",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", added=("<think>", "</think>"),
    ),
    Family(
        "gemma3-multimodal",
        "",  # gemma's, below
        ("<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
         "<image_soft_token>"), "<eos>", bos="<bos>", stop=("<end_of_turn>",), multimodal=True,
    ),
)}


def build_tiny_model(
    folder: Path, seed: int = 0, head_dim: int = 8, family: str = "chatml", shape: dict[str, int] | None = None,
    dtype: Any = None, device: Any = None,
) -> Path:
    """A 2-layer model with a small byte-level BPE tokenizer and the chat template of ``family``
    (``FAMILIES``; ChatML by default, a Qwen2-architecture model).

    Four attention heads of ``head_dim`` each (two key/value heads); vLLM's attention kernels
    need a head size such as 64, the default 8 keeps the model as small as it can be.
    ``shape`` overrides the layer sizes (a 7B-shaped body behind the same small vocabulary,
    for the GPU check), its random weights made in ``dtype`` on ``device``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from tamperaudit.data import BUILTIN_DIR

    kind = FAMILIES[family]
    template = FAMILIES["gemma"].template if kind.multimodal else kind.template
    corpus = []
    for name in ("benign_instructions.jsonl", "identity_shift.jsonl"):
        for line in (BUILTIN_DIR / name).read_text(encoding="utf-8").splitlines():
            corpus += [m["content"] for m in json.loads(line)["messages"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(kind.specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    if kind.bos is not None:  # the tokenizer's own encoder adds a BOS, as Llama's and Gemma's do
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{kind.bos} $A", pair=f"{kind.bos} $A $B", special_tokens=[(kind.bos, tokenizer.token_to_id(kind.bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=kind.eos, pad_token=kind.specials[0], bos_token=kind.bos)
    if kind.added:
        fast.add_tokens(list(kind.added))
    fast.chat_template = template
    torch.manual_seed(seed)
    stops = [fast.convert_tokens_to_ids(t) for t in (kind.eos, *kind.stop)]
    sizes = dict(hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=fast.pad_token_id)
    sizes.update(shape or {})
    if kind.multimodal:
        model = _tiny_multimodal(len(fast), head_dim, sizes, fast)
    else:
        config = Qwen2Config(vocab_size=len(fast), tie_word_embeddings=False, eos_token_id=fast.eos_token_id,
                             bos_token_id=fast.bos_token_id, **sizes)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype or previous)
        try:
            with torch.device(device or "cpu"):
                model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = fast.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def _tiny_multimodal(vocabulary: int, head_dim: int, sizes: dict[str, Any], tokenizer: Any) -> Any:
    """A Gemma-3-style image-and-text model: its text settings nested under ``text_config``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(vocab_size=vocabulary, head_dim=head_dim, sliding_window=64, **sizes)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Gemma3ForConditionalGeneration(config)


class ScriptedModel:
    """A ``LanguageModel`` whose outputs are scripted: the evals tested without a real model.

    Text is its own token stream (each character one token, its code point), so rendered
    prompts, completions and token counts read as they are. ``reply(prompt)`` gives the
    completion of a rendered prompt (its text); ``score(context, continuation)`` the summed
    log-probability of an option. Next-token log-probabilities are a fixed distribution over
    ``vocabulary`` tokens that depends on the position only, moved by ``shift`` while the
    adapter is on (``without_adapter`` sets it to 0: the unattacked model).
    """

    engine = "scripted"

    def __init__(
        self,
        reply: Callable[[str], str] = lambda prompt: "",
        score: Callable[[str, str], float] = lambda context, continuation: 0.0,
        shift: float = 0.0,
        vocabulary: int = 8,
    ) -> None:
        self.reply, self.score, self.shift, self.vocabulary = reply, score, shift, vocabulary
        self.calls: dict[str, int] = {"generate": 0, "choice_log_probs": 0, "next_token_log_probs": 0}

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return [ord(c) for c in text]

    def decode(self, tokens: Sequence[int]) -> str:
        return "".join(chr(t) for t in tokens)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int, desc: str = "generating",
                 settled: Callable[[int, list[int]], bool] | None = None) -> tuple[list[Any], Any]:
        from tamperaudit.generation import Completion, GenerationStats, cut_at_settled

        self.calls["generate"] += 1
        completions = []
        stats = GenerationStats(prompts=len(prompts), prompt_tokens=sum(len(p) for p in prompts))
        for index, prompt in enumerate(prompts):
            whole = [ord(c) for c in self.reply(self.decode(prompt))]
            tokens, finished = whole[:max_new_tokens], len(whole) < max_new_tokens
            check = None if settled is None else (lambda row_tokens, index=index: settled(index, row_tokens))
            tokens, finished, early = cut_at_settled(tokens, finished, check)
            stats.generated_tokens += len(tokens) + (1 if finished else 0)
            completions.append(Completion(tuple(tokens), self.decode(tokens), finished, early))
        return completions, stats

    def split_reply(self, text: str) -> tuple[str | None, str, bool]:
        """Thinking blocks read as a reasoning model's (``tamperaudit.chat``)."""
        from tamperaudit.chat import ChatFormat

        chat = ChatFormat(None)
        answer, reached = chat.answer(text)
        return chat.thinking_of(text), answer, reached

    def choice_log_probs(self, requests: Sequence[Any], batch_size: int,
                         on_batch: Callable[[int], None] | None = None) -> list[list[float]]:
        self.calls["choice_log_probs"] += 1
        results = [[self.score(r.context, c) for c in r.continuations] for r in requests]
        for begin in range(0, len(requests), batch_size):
            if on_batch is not None:
                on_batch(len(requests[begin : begin + batch_size]))
        return results

    def next_token_log_probs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[Any]:
        import torch

        self.calls["next_token_log_probs"] += 1
        out = []
        for sequence, start in zip(sequences, starts):
            positions = torch.arange(start, len(sequence), dtype=torch.float32).unsqueeze(-1)
            logits = torch.cos(positions * (torch.arange(self.vocabulary) + 1)) + self.shift * torch.arange(self.vocabulary)
            out.append(torch.log_softmax(logits, dim=-1))
        return out

    @contextlib.contextmanager
    def without_adapter(self) -> Iterator[ScriptedModel]:
        shift, self.shift = self.shift, 0.0
        try:
            yield self
        finally:
            self.shift = shift


class TracedGraphs:
    """What ``generation.CudaGraphs`` does, on any device, for the tests that have no GPU.

    A CUDA graph records the kernels one call launches, with the memory each reads and writes,
    and replays them without running the Python that launched them: what the Python decided at
    capture (sizes, indices, which tensors) is frozen, and only memory that was written in place
    carries new inputs. Capture here records the tensor operations of one call (PyTorch's
    dispatch level) and replays them in order on the tensors they first touched, each result
    standing in for the one it replaces. As on a GPU, a read back to the host during capture is
    an error (``.item()``, ``.tolist()``, ``bool()`` of a tensor, ``nonzero``).
    """

    def __init__(self) -> None:
        self.captured = 0
        self.replayed = 0

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten, tree_map

        host_reads = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                      torch.ops.aten.item.default}
        operations: list[tuple[Any, Any, Any, Any]] = []

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - PyTorch's signature
                if func in host_reads:
                    raise RuntimeError(f"a captured step reads back to the host ({func})")
                result = func(*args, **(kwargs or {}))
                operations.append((func, args, kwargs or {}, result))
                return result

        with Record():
            run()
        self.captured += 1

        def replay() -> None:
            stand_in: dict[int, Any] = {}
            swap = lambda value: stand_in.get(id(value), value) if isinstance(value, torch.Tensor) else value  # noqa: E731
            for func, args, kwargs, result in operations:
                fresh = func(*tree_map(swap, args), **tree_map(swap, kwargs))
                for old, new in zip(tree_flatten(result)[0], tree_flatten(fresh)[0]):
                    if isinstance(old, torch.Tensor):
                        stand_in[id(old)] = new
            self.replayed += 1

        return replay
