"""The big-model memory plan on the tiny model: gradient checkpointing, 4-bit (QLoRA) loading,
device_map placement, and out-of-memory errors that name the setting that fixes them."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tamperaudit import attack as attack_module
from tamperaudit import models
from tamperaudit.attack import LoraAttack, activation_bytes, plan_memory, tokenize_conversation
from tamperaudit.chat import ChatFormat
from tamperaudit.cli import main
from tamperaudit.config import AttackSettings
from tamperaudit.data import load_attack
from tamperaudit.fileio import read_json
from test_pipeline import audit_args, metrics_of

needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed (pip install -e '.[test]')"
)


def _train(tiny_model_dir, checkpointing: str, steps: int = 3, calls: list | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    settings = AttackSettings(learning_rate=1e-2, batch_size=2, lora_rank=4, gradient_checkpointing=checkpointing)
    attacker = LoraAttack(model, tokenizer, settings, torch.device("cpu"))
    if calls is not None:  # count passes into the first layer's MLP (a pre-hook: a recompute stops early,
        # once it has what the backward pass needs, before the MLP returns)
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    examples = [tokenize_conversation(ChatFormat.detect(tokenizer), c, 4096) for c in load_attack("identity-shift").data.items[:6]]
    from tamperaudit.attack import TrainState

    state = attacker.train(examples, TrainState(), steps)
    weights = {k: v.detach().clone() for k, v in attacker.model.named_parameters() if "lora_" in k}
    return attacker, state, weights


def test_gradient_checkpointing_gives_the_same_losses_and_adapter(tiny_model_dir):
    plain_calls: list = []
    recomputed: list = []
    plain, plain_state, plain_weights = _train(tiny_model_dir, "off", calls=plain_calls)
    checkpointed, state, weights = _train(tiny_model_dir, "on", calls=recomputed)
    assert checkpointed.plan.gradient_checkpointing and not plain.plan.gradient_checkpointing
    assert len(recomputed) == 2 * len(plain_calls) > 0  # each layer really ran again in the backward pass
    # Non-reentrant checkpointing recomputes the same operations in the same order: on a CPU
    # the losses agree to float32 rounding (stated tolerance 1e-6 relative; measured equal).
    assert state.losses == pytest.approx(plain_state.losses, rel=1e-6)
    for name, value in plain_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-7)


def test_auto_turns_checkpointing_on_only_when_activations_would_not_fit(monkeypatch):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80)  # 70B-shaped
    settings = AttackSettings()
    stored = activation_bytes(config, 8192, 2, checkpointing=False)
    assert activation_bytes(config, 8192, 2, checkpointing=True) < stored / 10
    monkeypatch.setattr(attack_module, "free_memory", lambda device: 80 * 1024**3)
    plan = plan_memory(settings, config, torch.bfloat16, torch.device("cuda"))
    assert plan.gradient_checkpointing and plan.micro_batch_tokens == 8192 and "GiB" in plan.reason
    monkeypatch.setattr(attack_module, "free_memory", lambda device: 10 * stored)
    assert not plan_memory(settings, config, torch.bfloat16, torch.device("cuda")).gradient_checkpointing
    cpu = plan_memory(settings, config, torch.float32, torch.device("cpu"))
    assert cpu.micro_batch_tokens == 256
    assert plan_memory(AttackSettings(gradient_checkpointing="off"), config, torch.bfloat16, torch.device("cuda")).reason.startswith("asked")


def test_every_new_setting_changes_nothing_measured_but_how_memory_is_used(tiny_model_dir, tmp_path):
    """Checkpointing and accelerate's placement are memory plans: the same numbers come out."""
    default, planned = tmp_path / "default", tmp_path / "planned"
    assert main(audit_args(tiny_model_dir, default, "0,2")) == 0
    extra = ["--set", "attack.gradient_checkpointing=on", "--set", "model.device_map=auto"]
    assert main(audit_args(tiny_model_dir, planned, "0,2") + extra) == 0
    a, b = read_json(default / "report.json"), read_json(planned / "report.json")
    assert metrics_of(a) == metrics_of(b)
    assert not a["model"]["training_memory"]["gradient_checkpointing"] and b["model"]["training_memory"]["gradient_checkpointing"]
    assert a["model"]["quantization"] == "none" and "loaded as" not in (default / "report.md").read_text()
    # The projection to Llama 2 sizes is built from the run's own token count.
    projection = a["projection"]
    measured = a["points"][-1]["cost"]["tokens"]
    assert projection["tokens"] in {p["cost"]["tokens"] for p in a["points"] if p["cost"]} and projection["tokens"] <= measured
    assert len(projection["rows"]) == 6 and all(r["dollars"] > 0 for r in projection["rows"])
    assert any(line.startswith("Projection, not a measurement") for line in a["summary"])
    assert "## Projection to larger models (an estimate, not a measurement)" in (default / "report.md").read_text()


@needs_bitsandbytes
def test_an_nf4_audit_trains_and_evaluates_on_the_4bit_base_and_says_so(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, out, "0,2") + ["--set", "attack.quantization=nf4", "--no-control"]) == 0
    report = read_json(out / "report.json")
    model = report["model"]
    assert model["quantization"] == "nf4" and "4-bit" in model["quantization_description"]
    full = models.load(str(tiny_model_dir), "float32")
    assert model["parameters"] == full.info.parameters  # weights counted, not packed bytes
    assert model["weight_bytes"] < full.info.weight_bytes
    assert any("4-bit" in line for line in report["summary"])
    assert "loaded as: NF4 4-bit" in (out / "report.md").read_text()
    trained = report["points"][1]
    assert trained["train"]["steps"] == 2 and trained["metrics"]["kl"]["mean"] > 0  # the adapter changed the model


@needs_bitsandbytes
def test_the_4bit_model_really_holds_4bit_layers_and_lora_trains_on_them(tiny_model_dir):
    import bitsandbytes

    loaded = models.load(str(tiny_model_dir), "float32", quantization="nf4")
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bitsandbytes.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
    assert not isinstance(loaded.model.lm_head, bitsandbytes.nn.Linear4bit)  # the head stays in full precision
    settings = AttackSettings(learning_rate=1e-2, batch_size=2, lora_rank=4)
    attacker = LoraAttack(loaded.model, loaded.tokenizer, settings, loaded.device)
    packed_before = layer.weight.data.clone()
    examples = [tokenize_conversation(ChatFormat.detect(loaded.tokenizer), c, 4096) for c in load_attack("identity-shift").data.items[:4]]
    from tamperaudit.attack import TrainState

    state = attacker.train(examples, TrainState(), 2)
    assert all(torch.isfinite(torch.tensor(state.losses)))
    assert torch.equal(layer.weight.data, packed_before)  # the 4-bit base is frozen
    lora_b = [p for n, p in attacker.model.named_parameters() if "lora_B" in n]
    assert any(float(p.detach().abs().sum()) > 0 for p in lora_b)


def test_nf4_without_bitsandbytes_names_the_install(tiny_model_dir, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert main(audit_args(tiny_model_dir, tmp_path / "run", "0,1") + ["--set", "attack.quantization=nf4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'tamperaudit[qlora]'" in err


def test_out_of_memory_in_training_names_the_settings_that_fix_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    def exhausted(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LoraAttack, "_step", exhausted)
    out = tmp_path / "run"
    assert main(audit_args(tiny_model_dir, out, "0,1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for setting in ("attack.micro_batch_tokens", "attack.gradient_checkpointing=on", "attack.quantization=nf4", "model.device_map=auto"):
        assert setting in err
    assert read_json(out / "report.json")["status"] == "error"



def test_out_of_memory_while_loading_names_nf4_and_device_map(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 26.00 GiB")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", exhausted)
    assert main(audit_args(tiny_model_dir, tmp_path / "run", "0,1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "attack.quantization=nf4" in err and "model.device_map=auto" in err
