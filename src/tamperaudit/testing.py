"""Tiny random chat models for tests and checks: built from a config, nothing downloaded.

Random weights say nothing about refusals, only that every path runs; the tests
and ``benchmarks/gpu_check.py`` build their models here so they build the same one.
"""

from __future__ import annotations

import json
from pathlib import Path


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


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Qwen2-architecture model with a small byte-level BPE tokenizer and a ChatML template."""
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
        hidden_size=32,
        intermediate_size=64,
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
