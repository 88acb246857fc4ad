"""Generation backends without vLLM: the choice, the HF path's early stops reproduced on whole
completions, and the vLLM generator's handling of engine outputs (against a stand-in engine).
The real vLLM checks are in test_vllm.py, run in their own environment."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import TINY_SETTINGS
from tamperaudit.backends import choose as backends
from tamperaudit.backends.choose import choose_backend
from tamperaudit.backends.hf import HfModel
from tamperaudit.backends.vllm import VllmBackend, engine_lora_rank
from tamperaudit.cli import main
from tamperaudit.data import load_harmful
from tamperaudit.errors import UserError
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.refusal import settled_check
from tamperaudit.fileio import read_json
from tamperaudit.chat import ChatFormat
from tamperaudit.generation import cut_at_settled, generate


def test_auto_takes_vllm_only_where_installed_and_on_a_gpu(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    assert choose_backend("auto", gpu, "none").name == "hf"
    with pytest.raises(UserError, match="needs vLLM"):
        choose_backend("vllm", gpu, "none")
    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    assert choose_backend("auto", gpu, "none").name == "vllm"
    assert choose_backend("auto", cpu, "none").name == "hf"
    assert choose_backend("auto", gpu, "nf4").name == "hf"
    assert choose_backend("vllm", cpu, "none").name == "vllm"
    with pytest.raises(UserError, match="nf4"):
        choose_backend("vllm", gpu, "nf4")
    assert choose_backend("hf", gpu, "none").name == "hf"


def test_engine_rank_is_the_smallest_vllm_accepts():
    assert [engine_lora_rank(r) for r in (1, 4, 8, 16, 17, 64)] == [1, 8, 8, 16, 32, 64]


def test_cutting_whole_completions_reproduces_the_loops_early_stops(tiny_model_dir):
    """vLLM cannot stop rows on our test; cut afterwards, its completions equal the HF loop's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    requests = [p.text for p in load_harmful("builtin", 8).items]
    prompts = [ChatFormat.detect(tokenizer).ids([{"role": "user", "content": r}]) for r in requests]
    check = settled_check(KeywordJudge(), HfModel(model, tokenizer), requests)
    calls: list[int] = []

    def counting(index, tokens):
        calls.append(index)
        return check(index, tokens) or len(tokens) >= 8  # also settle some rows by length, so cuts happen

    stopped, _ = generate(model, tokenizer, prompts, 20, 4, settled=counting)
    whole, _ = generate(model, tokenizer, prompts, 20, 4)
    assert calls and any(c.settled for c in stopped)
    for index, (early, full) in enumerate(zip(stopped, whole)):
        cut = cut_at_settled(list(full.tokens), full.finished, lambda tokens, index=index: counting(index, tokens))
        assert cut == (list(early.tokens), early.finished, early.settled), index


class FakeEngine:
    """Stands in for vllm.LLM: returns scripted token ids and records what it was asked."""

    created: list[dict] = []

    def __init__(self, **options):
        FakeEngine.created.append(options)
        self.calls: list[tuple] = []
        self.script: list[tuple[list[int], str]] = []

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        self.calls.append((prompts, params, lora_request))
        return [
            types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tokens, finish_reason=reason)])
            for tokens, reason in self.script[: len(prompts)]
        ]


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__version__ = "0.0-test"
    module.LLM = FakeEngine
    module.SamplingParams = lambda **kwargs: kwargs
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, number, path: (name, number, path)
    for name, value in {"vllm": module, "vllm.inputs": inputs, "vllm.lora": types.ModuleType("vllm.lora"), "vllm.lora.request": lora}.items():
        monkeypatch.setitem(sys.modules, name, value)
    FakeEngine.created = []
    return module


class Tokenizer:
    eos_token_id = 9

    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(f"t{t}" for t in tokens)


def _generator(tmp_path):
    return VllmBackend("asked for", tmp_path, "float32", 16, 1, 128, 64, 0.4, "cpu")


def _adapter(folder: Path, rank: int = 16, content: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


def test_the_vllm_generator_strips_stops_cuts_early_and_keeps_one_engine(fake_vllm, tmp_path):
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=[9, 7]))
    generator = _generator(tmp_path)
    generator._engine().script = [([1, 2, 3, 9], "stop"), ([4, 4, 4, 4, 4, 4, 4, 4], "length"), ([5, 6], "length")]
    settled = lambda index, tokens: index == 1 and len(tokens) >= 4  # noqa: E731
    hf = HfModel(model, Tokenizer())
    completions, stats = generator.model(hf, None).generate([[0, 1], [0, 2], [0, 3]], 8, 128, settled=settled)
    assert [(c.tokens, c.finished, c.settled) for c in completions] == [
        ((1, 2, 3), True, False),  # the end-of-turn token is not part of the reply
        ((4, 4, 4, 4), False, True),  # cut where the loop would have stopped it
        ((5, 6), False, False),
    ]
    assert completions[0].text == "t1 t2 t3" and stats.generated_tokens == 14 and stats.prompts == 3
    prompts, params, lora = generator._llm.calls[0]
    assert params["temperature"] == 0.0 and params["max_tokens"] == 8 and params["stop_token_ids"] == [7, 9]
    assert prompts[0] == {"prompt_token_ids": [0, 1]} and lora is None
    generator.model(hf, None).generate([[0, 1]], 8, 128)
    assert len(FakeEngine.created) == 1  # one engine per process, reused
    options = FakeEngine.created[0]
    assert options["enable_lora"] and options["max_lora_rank"] == 16 and options["max_loras"] == 1
    assert options["dtype"] == "float32" and options["trust_remote_code"] is False


def test_each_adapter_version_gets_its_own_lora_id(fake_vllm, tmp_path):
    import os

    generator = _generator(tmp_path)
    adapter = _adapter(tmp_path / "budget-000005" / "adapter")
    first = generator._lora_request(adapter)
    assert generator._lora_request(adapter) == first  # the same file: the same id, served from vLLM's cache
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"retrained")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = generator._lora_request(adapter)
    assert second[1] != first[1] and second[2] == str(adapter)
    with pytest.raises(UserError, match="rank 32"):
        generator._lora_request(_adapter(tmp_path / "wide", rank=32))


def test_a_prompt_longer_than_the_engine_takes_is_one_line(fake_vllm, tmp_path):
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=9))
    with pytest.raises(UserError, match="eval.vllm_max_model_len=64"):
        _generator(tmp_path).model(HfModel(model, Tokenizer()), None).generate([list(range(60))], 8, 128)


def test_the_report_names_the_generation_backend(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["audit", "--model", str(tiny_model_dir), "--out", str(out), "--budgets", "0,1", "--no-control", "--quiet", *TINY_SETTINGS]
    assert main(argv) == 0
    report = read_json(out / "report.json")
    assert report["generation_backend"]["name"] == "hf"
    assert all(p["metrics"]["throughput"]["generation"]["backend"] == "hf" for p in report["points"])
    assert read_json(out / "manifest.json")["inputs"]["generation_backend"] == "hf"
    assert "- generation: hf" in (out / "report.md").read_text()


def test_asking_for_vllm_without_it_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    argv = ["audit", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--quiet", "--set", "eval.backend=vllm", *TINY_SETTINGS]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tamperaudit[vllm]" in err
