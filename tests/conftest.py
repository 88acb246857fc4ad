"""Shared fixtures: a tiny random chat model built in the test (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

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
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
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


def adapters_in(run: Path) -> list[str]:
    """The stages of a run folder that hold a LoRA adapter on disk."""
    return sorted(p.parent.relative_to(run).as_posix() for p in run.rglob("adapter"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TAMPERAUDIT_CACHE", str(cache))
    return cache


# Settings that make an audit of the tiny model take seconds.
TINY_SETTINGS = [
    "--set", "eval.harmful_limit=6",
    "--set", "eval.benign_limit=4",
    "--set", "eval.capability_limit=6",
    "--set", "eval.kl_limit=3",
    "--set", "eval.max_new_tokens=6",
    "--set", "eval.kl_tokens=5",
    "--set", "eval.batch_size=4",
    "--set", "attack.batch_size=2",
    "--set", "attack.max_length=4096",
    "--set", "model.precision=float32",
]


SHARED_REASON = "../shared/benchmarks is not present"


def requires_shared() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not SHARED_BENCHMARKS.is_dir(), reason=SHARED_REASON)


# CI sets TAMPERAUDIT_FAIL_ON_SKIP=1 where ../shared exists (see .ci/run): there, every test
# is expected to run, so a skip (a benchmark file or a model package gone missing) fails
# the session instead of passing silently. A bare checkout still skips, with the reason.
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("TAMPERAUDIT_FAIL_ON_SKIP") == "1" and _skipped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"TAMPERAUDIT_FAIL_ON_SKIP: {len(_skipped)} test(s) skipped: {', '.join(_skipped[:5])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_fault_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAMPERAUDIT_FAULT", "TAMPERAUDIT_FAULT_SIGNAL"):
        monkeypatch.delenv(name, raising=False)
        os.environ.pop(name, None)
