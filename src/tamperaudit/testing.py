"""Stand-ins for tests and checks: tiny random chat models built from a config (nothing
downloaded), and a scripted ``LanguageModel`` for the evals.

Random weights say nothing about refusals, only that every path runs; the tests
and ``benchmarks/gpu_check.py`` build their models here so they build the same one.
"""

from __future__ import annotations

import contextlib
import json
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


def build_tiny_model(folder: Path, seed: int = 0, head_dim: int = 8) -> Path:
    """A 2-layer Qwen2-architecture model with a small byte-level BPE tokenizer and a ChatML template.

    Four attention heads of ``head_dim`` each (two key/value heads); vLLM's attention kernels
    need a head size such as 64, the default 8 keeps the model as small as it can be."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from tamperaudit.data import BUILTIN_DIR

    corpus = []
    for name in ("benign_instructions.jsonl", "identity_shift.jsonl"):
        for line in (BUILTIN_DIR / name).read_text(encoding="utf-8").splitlines():
            corpus += [m["content"] for m in json.loads(line)["messages"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=4 * head_dim,
        intermediate_size=8 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


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
