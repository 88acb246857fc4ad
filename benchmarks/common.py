"""Shared helpers for the speed benchmarks: the model, the matmul peak, and result tables.

Benchmarks print ratios of tamperaudit's path to a baseline measured in the same
process on the same inputs; they never assert a time. Achieved GFLOPS are shown
beside the measured matmul peak of this machine, so a reader can tell whether a
path is compute-bound or leaves the hardware idle.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tamperaudit import models, progress  # noqa: E402


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="model to benchmark on")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    return parser


def load(spec: str, precision: str = "float32") -> models.LoadedModel:
    progress.set_quiet(True)
    return models.load(spec, precision)


def fresh_model(loaded: models.LoadedModel, dtype: torch.dtype = torch.float32) -> Any:
    """A second copy of the weights, so that one path's training cannot touch the other's."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(loaded.source.folder, dtype=dtype, use_safetensors=True).eval()


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained GFLOPS of a square matmul in this dtype (the ceiling for these paths)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children, in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024 / 1024


def report(title: str, rows: list[dict[str, Any]], peak: float, extra: dict[str, Any] | None = None, path: Path | None = None) -> None:
    """Print a table: each path's rate, its ratio to the first row (the baseline), GFLOPS and share of peak."""
    print(f"\n== {title}")
    print(f"matmul peak (fp32, measured now): {peak:.1f} GFLOPS")
    baseline = rows[0]["rate"]
    for row in rows:
        gflops = row.get("gflops")
        share = f"{100 * gflops / peak:5.1f}% of peak" if gflops else ""
        print(
            f"  {row['name']:<44} {row['rate']:10.2f} {row['unit']:<22} x{row['rate'] / baseline:6.2f}   "
            + (f"{gflops:7.1f} GFLOPS {share}" if gflops else "")
        )
    for key, value in (extra or {}).items():
        print(f"  {key}: {value}")
    if path:
        path.write_text(json.dumps({"title": title, "peak_gflops": peak, "rows": rows, **(extra or {})}, indent=2))
