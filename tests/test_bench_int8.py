"""The int8 lever of ``benchmarks/bench_int8_generation.py``: which layers it quantizes, that
LoRA's own layers stay float32 on top, and that the float32 model comes back unchanged."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_int8_generation as bench  # noqa: E402

from tamperaudit import models  # noqa: E402


def _lora_model(folder: Path):
    from peft import LoraConfig, get_peft_model

    model = models.load(str(folder), precision="float32").model
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    return model.eval()


def test_int8_swaps_the_base_layers_keeps_lora_float32_and_puts_everything_back(tiny_model_dir):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    model = _lora_model(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear and ".lora_" not in n]
    with bench.int8_linears(model, "per_channel_dynamic_qconfig", head_only=False) as swapped:
        assert swapped == len(linears) and swapped > 1
        quantized = [n for n, m in model.named_modules() if isinstance(m, DynamicInt8Linear)]
        assert len(quantized) == swapped and any(n.endswith("lm_head") for n in quantized)
        assert any(n.endswith("q_proj.base_layer") for n in quantized)  # under LoRA: the base layer
        lora = [m for n, m in model.named_modules() if ".lora_A." in n and isinstance(m, torch.nn.Linear)]
        assert lora and all(m.weight.dtype == torch.float32 for m in lora)
        with torch.no_grad():
            during = model(input_ids=ids).logits
        # close to float32 (the adapter still applies), but not the same numbers
        assert not torch.equal(during, before)
        assert torch.allclose(during.softmax(-1), before.softmax(-1), atol=0.05)
    assert not any(isinstance(m, DynamicInt8Linear) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_head_only_quantizes_the_vocabulary_head_alone(tiny_model_dir):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    model = _lora_model(tiny_model_dir)
    with bench.int8_linears(model, "default_dynamic_qconfig", head_only=True) as swapped:
        assert swapped == 1
        assert [n for n, m in model.named_modules() if isinstance(m, DynamicInt8Linear)] == ["base_model.model.lm_head"]
