"""GPU prices and the projection of a measured attack onto Llama 2 sizes, on constructed inputs."""

from __future__ import annotations

import pytest
import torch

from tamperaudit.attack import LoraAttack
from tamperaudit.config import AttackSettings
from tamperaudit.report.words import significant
from tamperaudit.cost import (
    GPU_PRICES,
    LLAMA2_SHAPES,
    Hardware,
    ModelShape,
    gpu_price,
    price_per_hour,
    project,
    projected_training_flops,
)


@pytest.mark.parametrize(
    ("device_name", "gpu"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM 80GB"),
        ("NVIDIA H100 PCIe", "H100 PCIe 80GB"),
        ("NVIDIA H100 NVL", "H100 NVL 94GB"),
        ("NVIDIA H200", "H200 141GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090 24GB"),
    ],
)
def test_gpu_names_as_drivers_report_them_find_their_price(device_name, gpu):
    assert gpu_price(device_name).gpu == gpu


def test_every_price_names_its_source_and_date():
    for row in GPU_PRICES:
        assert row.source.startswith("https://") and len(row.read_on) == 10 and row.per_gpu_hour > 0 and row.bf16_tflops > 0


def test_a_gpu_run_is_priced_per_gpu_used_and_an_unknown_gpu_gets_no_dollars():
    one = Hardware(description="NVIDIA H100 80GB HBM3", device="cuda", threads=16, gpus=1, gpu_name="NVIDIA H100 80GB HBM3")
    price, source = price_per_hour(None, one)
    assert price == 3.99 and "runpod.io" in source and "2026-11-09" in source
    two = Hardware(description="2 x NVIDIA H100 80GB HBM3", device="cuda", threads=16, gpus=2, gpu_name="NVIDIA H100 80GB HBM3")
    assert price_per_hour(None, two)[0] == pytest.approx(7.98) and "each of 2 GPUs" in price_per_hour(None, two)[1]
    unknown = Hardware(description="Tesla T4", device="cuda", threads=8, gpus=1, gpu_name="Tesla T4")
    price, source = price_per_hour(None, unknown)
    assert price is None and "Tesla T4" in source and "cost.price_per_hour" in source
    assert price_per_hour(1.5, unknown) == (1.5, "configured (cost.price_per_hour)")


def test_llama2_shapes_count_the_published_parameters():
    published = {"Llama-2-7B": 6_738_415_616, "Llama-2-13B": 13_015_864_320, "Llama-2-70B": 68_976_648_192}
    for shape in LLAMA2_SHAPES:
        assert shape.body_parameters() + 2 * shape.head_parameters() == published[shape.name]


def test_shape_arithmetic_matches_a_real_model_with_lora():
    """The projection's counts equal those the trainer takes from a real (small) model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = ModelShape("small", hidden=64, intermediate=160, layers=3, heads=8, kv_heads=2, vocab=300)
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)

    class Tokenizer:
        pad_token_id = 0

    attacker = LoraAttack(model, Tokenizer(), AttackSettings(lora_rank=4), torch.device("cpu"))
    assert attacker.lora_parameters == shape.lora_parameters(4)
    assert attacker.body_parameters == shape.body_parameters()
    assert attacker.head_parameters == shape.head_parameters()


def test_projection_rows_follow_from_flops_peak_utilisation_and_price():
    def h100_13b(rows):
        return next(r for r in rows if r.model == "Llama-2-13B" and r.gpu == "H100 SXM 80GB")

    rows = project(tokens=3884, labelled_tokens=2000, rank=16, utilization=0.4)
    assert {r.model for r in rows} == {"Llama-2-7B", "Llama-2-13B", "Llama-2-70B"}
    h100 = h100_13b(rows)
    shape = next(s for s in LLAMA2_SHAPES if s.name == "Llama-2-13B")
    flops = 4 * shape.body_parameters() * 3884 + 4 * shape.head_parameters() * 2000 + 6 * shape.lora_parameters(16) * 3884
    assert h100.flops == pytest.approx(flops)
    assert h100.gpu_hours == pytest.approx(flops / (989e12 * 0.4) / 3600)
    assert h100.dollars == pytest.approx(h100.gpu_hours * 3.99)
    doubled = project(tokens=2 * 3884, labelled_tokens=4000, rank=16, utilization=0.4)
    assert h100_13b(doubled).dollars == pytest.approx(2 * h100.dollars)
    seventy = [r for r in rows if r.model == "Llama-2-70B"]
    assert all(r.gradient_checkpointing for r in seventy)
    big = next(s for s in LLAMA2_SHAPES if s.name == "Llama-2-70B")
    assert seventy[0].flops == pytest.approx(projected_training_flops(big, 16, 3884, 2000, False) + 2 * big.body_parameters() * 3884)
    # Halving the utilisation doubles the time and the price.
    slow = project(tokens=3884, labelled_tokens=2000, rank=16, utilization=0.2)
    assert h100_13b(slow).gpu_hours == pytest.approx(2 * h100.gpu_hours)


@pytest.mark.parametrize(("value", "text"), [(0.000612, "0.00061"), (0.0123, "0.012"), (3.456, "3.5"), (12.3, "12"), (1400.2, "1,400")])
def test_small_costs_print_without_e_notation(value, text):
    assert significant(value) == text
