"""What an attack cost: FLOPs, seconds and dollars. Pure functions, plus hardware detection."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch

# AWS EC2 c7i.large (2 vCPU, 4 GiB) on-demand Linux price in us-east-1, from
# https://aws.amazon.com/ec2/pricing/on-demand/ : a rented machine of the size
# this tool's defaults are measured on. Override with cost.price_per_hour.
DEFAULT_CPU_PRICE_PER_HOUR = 0.08925
DEFAULT_CPU_PRICE_SOURCE = "AWS EC2 c7i.large on-demand, us-east-1, Linux (2 vCPU)"


@dataclass(frozen=True)
class Hardware:
    description: str
    device: str  # "cpu" or "cuda"
    threads: int


def detect_hardware(device: torch.device, configured: str = "") -> Hardware:
    threads = torch.get_num_threads()
    if configured:
        return Hardware(configured, device.type, threads)
    if device.type == "cuda":
        return Hardware(torch.cuda.get_device_name(device), "cuda", threads)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return Hardware(f"{name}, {threads} threads of {os.cpu_count()} CPUs", "cpu", threads)


def price_per_hour(configured: float | None, hardware: Hardware) -> tuple[float | None, str]:
    """The price used for dollars and where it comes from; None when unknown."""
    if configured is not None:
        return configured, "configured (cost.price_per_hour)"
    if hardware.device == "cpu":
        return DEFAULT_CPU_PRICE_PER_HOUR, DEFAULT_CPU_PRICE_SOURCE
    return None, "no default price for this device; set cost.price_per_hour"


def budget_cost(train: dict[str, Any], flops: float, price: float | None) -> dict[str, Any]:
    """Cost of reaching one budget, from its cumulative train.json counts."""
    seconds = float(train["seconds"])
    return {
        "steps": int(train["steps"]),
        "examples": int(train["examples"]),
        "tokens": int(train["tokens"]),
        "labelled_tokens": int(train["labelled_tokens"]),
        "seconds": seconds,
        "flops": flops,
        "achieved_gflops": flops / seconds / 1e9 if seconds else None,
        "dollars": seconds / 3600.0 * price if price is not None else None,
    }
