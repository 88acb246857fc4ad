"""What an attack cost: FLOPs, seconds and dollars. Pure functions, plus hardware detection.

Also a projection of the measured attack onto other model sizes and GPUs: the
seed result (BadLlama: Llama 2-Chat 13B for under $200) is a GPU-scale figure,
and a CPU audit of a 0.5B model is compared with it through the attack's tokens.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass

import torch

from tamperaudit.records import Cost, Hardware, ProjectionRow, TrainState

# AWS EC2 c7i.large (2 vCPU, 4 GiB) on-demand Linux price in us-east-1, from
# https://aws.amazon.com/ec2/pricing/on-demand/ : a rented machine of the size
# this tool's defaults are measured on. Override with cost.price_per_hour.
DEFAULT_CPU_PRICE_PER_HOUR = 0.08925
DEFAULT_CPU_PRICE_SOURCE = "AWS EC2 c7i.large on-demand, us-east-1, Linux (2 vCPU)"


def training_flops(
    body_parameters: int, head_parameters: int, lora_parameters: int, tokens: int, labelled_tokens: int
) -> float:
    """Estimated FLOPs of LoRA training steps, the usual 2-FLOPs-per-weight-per-token count.

    Forward: 2 x weights x tokens. Backward through frozen weights needs input
    gradients only (2 x weights x tokens), not weight gradients. The vocabulary
    head runs only at labelled positions. LoRA weights take the full 6 x count.
    Attention score FLOPs are left out (small at these lengths).
    """
    return 4.0 * body_parameters * tokens + 4.0 * head_parameters * labelled_tokens + 6.0 * lora_parameters * tokens


@dataclass(frozen=True)
class GpuPrice:
    """One row of the on-demand price table: what a GPU of this name rents for."""

    pattern: str  # matched against torch.cuda.get_device_name(), case-insensitive, first match wins
    gpu: str
    per_gpu_hour: float  # US dollars, on demand, one GPU
    bf16_tflops: float  # dense bfloat16 tensor-core peak from the vendor's data sheet
    offer: str  # whose price, for which product
    source: str  # the page the price was read from
    read_on: str  # when it was read (ISO date)

    def describe(self) -> str:
        return f"{self.offer}, ${self.per_gpu_hour:.2f} per GPU-hour on demand ({self.source}, read {self.read_on})"


# On-demand list prices per GPU-hour, as published on each provider's pricing page and
# transcribed on the date shown (by the public price collections datareceipts/data-receipts
# "109-gpu-pricing" and api-evangelist; rechecked against no other source). Prices move:
# set cost.price_per_hour for the price you pay. Peaks are NVIDIA's dense bf16 figures.
GPU_PRICES: tuple[GpuPrice, ...] = (
    # (?<![A-Z]): "NVIDIA GH200 480GB" and "GB200" are other products (Grace superchips)
    GpuPrice(r"(?<![A-Z])H200", "H200 141GB", 4.45, 989.0, "Akash Network H200 SXM5 (a 'starting at' price)",
             "https://akash.network/pricing/gpus/", "2026-09-20"),
    GpuPrice(r"(?<![A-Z])H100.*PCIe", "H100 PCIe 80GB", 2.89, 756.0, "RunPod Secure Cloud H100 PCIe",
             "https://www.runpod.io/pricing", "2026-11-09"),
    GpuPrice(r"(?<![A-Z])H100.*NVL", "H100 NVL 94GB", 3.19, 835.0, "RunPod Secure Cloud H100 NVL",
             "https://www.runpod.io/pricing", "2026-11-09"),
    GpuPrice(r"(?<![A-Z])H100", "H100 SXM 80GB", 3.99, 989.0, "RunPod Secure Cloud H100 SXM",
             "https://www.runpod.io/pricing", "2026-11-09"),
    GpuPrice(r"A100.*80GB", "A100 80GB", 1.79, 312.0, "RunPod Secure Cloud A100 80GB (SXM and PCIe alike)",
             "https://www.runpod.io/pricing", "2026-11-09"),
    GpuPrice(r"A100", "A100 40GB", 1.99, 312.0, "Lambda 8x A100 SXM 40GB, per GPU",
             "https://lambda.ai/instances", "2026-09-20"),
    GpuPrice(r"(?<![A-Z])B200", "B200 180GB", 6.69, 2250.0, "Lambda 8x B200 SXM6, per GPU",
             "https://lambda.ai/instances", "2026-09-20"),
    GpuPrice(r"RTX 4090", "RTX 4090 24GB", 0.29, 165.2, "OpenRelay RTX 4090",
             "https://openrelay.inc/gpu-pricing-calculator", "2026-09-20"),
)


def gpu_price(device_name: str) -> GpuPrice | None:
    """The price-table row for a GPU name such as 'NVIDIA H100 80GB HBM3', or None."""
    return next((row for row in GPU_PRICES if re.search(row.pattern, device_name, re.IGNORECASE)), None)


def detect_hardware(device: torch.device, configured: str = "", gpus: int = 1, processes: int = 1) -> Hardware:
    threads = torch.get_num_threads()
    if configured:
        return Hardware(description=configured, device=device.type, threads=threads,
                        gpus=gpus if device.type == "cuda" else 0, processes=processes)
    each = f" in each of {processes} processes" if processes > 1 else ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return Hardware(description=(f"{gpus} x {name}" if gpus > 1 else name) + each, device="cuda", threads=threads,
                        gpus=gpus, gpu_name=name, processes=processes)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return Hardware(description=f"{name}, {threads} threads of {os.cpu_count()} CPUs{each}", device="cpu", threads=threads,
                    processes=processes)


def price_per_hour(configured: float | None, hardware: Hardware) -> tuple[float | None, str]:
    """The price used for dollars and where it comes from; None when unknown."""
    if configured is not None:
        return configured, "configured (cost.price_per_hour)"
    if hardware.device == "cpu":
        return DEFAULT_CPU_PRICE_PER_HOUR, DEFAULT_CPU_PRICE_SOURCE
    row = gpu_price(hardware.gpu_name or hardware.description)
    if row is not None:
        gpus = max(hardware.gpus, 1)
        each = f" for each of {gpus} GPUs" if gpus > 1 else ""
        return row.per_gpu_hour * gpus, f"{row.describe()}{each}"
    return None, f"no price in the table for '{hardware.description}'; set cost.price_per_hour"


def budget_cost(train: TrainState, price: float | None) -> Cost:
    """Cost of reaching one budget, from its cumulative train.json counts."""
    seconds = float(train.seconds)
    return Cost(
        steps=train.steps, examples=train.examples, tokens=train.tokens, labelled_tokens=train.labelled_tokens,
        seconds=seconds, flops=train.flops, achieved_gflops=train.flops / seconds / 1e9 if seconds else None,
        dollars=seconds / 3600.0 * price if price is not None else None,
    )


# --- projection to other model sizes and GPUs --------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape, enough to count its weights and LoRA weights."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    def body_parameters(self) -> int:
        """Weights each token multiplies, without the embedding and the vocabulary head."""
        kv = self.hidden * self.kv_heads // self.heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden
        return self.layers * (attention + mlp + norms) + self.hidden

    def head_parameters(self) -> int:
        return self.vocab * self.hidden

    def lora_parameters(self, rank: int) -> int:
        """LoRA weights on q, k, v, o, gate, up and down projections (the default targets)."""
        kv = self.hidden * self.kv_heads // self.heads
        pairs = [(self.hidden, self.hidden)] * 2 + [(self.hidden, kv)] * 2 + [(self.hidden, self.intermediate)] * 3
        return self.layers * rank * sum(a + b for a, b in pairs)


# Llama 2's published shapes (Touvron et al. 2023, and the configs on the Hub): the
# models of BadLlama (13B) and of Lermen et al. (7B, 13B, 70B).
LLAMA2_SHAPES = (
    ModelShape("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000),
    ModelShape("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000),
    ModelShape("Llama-2-70B", 8192, 28672, 80, 64, 8, 32000),
)
PROJECTION_GPUS = ("H100 SXM 80GB", "A100 80GB")
PROJECTION_UTILIZATION = 0.40


def projected_training_flops(shape: ModelShape, rank: int, tokens: int, labelled_tokens: int, checkpointing: bool) -> float:
    """LoRA training FLOPs for ``tokens`` tokens on a model of this shape.

    The measured run's count (``training_flops``); gradient checkpointing adds one more
    forward pass (2 per frozen weight per token), which a 70B model on one GPU needs.
    """
    body = shape.body_parameters()
    flops = training_flops(body, shape.head_parameters(), shape.lora_parameters(rank), tokens, labelled_tokens)
    return flops + (2.0 * body * tokens if checkpointing else 0.0)


def project(tokens: int, labelled_tokens: int, rank: int, utilization: float = PROJECTION_UTILIZATION) -> list[ProjectionRow]:
    """The measured attack's tokens on Llama 2 7B/13B/70B and two GPUs: GPU-hours and dollars.

    Assumes the larger model needs the same number of attack tokens as the audited one,
    that training runs at ``utilization`` of the GPU's dense bf16 peak, and (for 70B)
    gradient checkpointing; it counts training only, not evaluation, loading or idle time.
    """
    rows = []
    for shape in LLAMA2_SHAPES:
        checkpointing = shape.name.endswith("70B")
        flops = projected_training_flops(shape, rank, tokens, labelled_tokens, checkpointing)
        for gpu_name in PROJECTION_GPUS:
            gpu = next(row for row in GPU_PRICES if row.gpu == gpu_name)
            hours = flops / (gpu.bf16_tflops * 1e12 * utilization) / 3600.0
            rows.append(ProjectionRow(
                model=shape.name, parameters=shape.body_parameters() + 2 * shape.head_parameters(), gpu=gpu.gpu,
                tokens=tokens, flops=flops, gradient_checkpointing=checkpointing, gpu_hours=hours,
                dollars=hours * gpu.per_gpu_hour, price=gpu.describe(),
            ))
    return rows
