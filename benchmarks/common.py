"""Shared helpers for the speed benchmarks: the model, the matmul peak, timing, and result tables.

Benchmarks print ratios of tamperaudit's path to a baseline measured in the same
process on the same inputs; they never assert a time. Every path gets an untimed
warm-up first, and the timed runs alternate (A B B A ...; see ``alternating``),
so neither side gains from running second on warm caches or loses to a slow
stretch of a shared machine; each path's figure is its fastest timed run.
Achieved GFLOPS are shown beside this machine's matmul peak, measured before and
after the timings (a drop between the two means something else was using the
CPU), so a reader can tell whether a path is compute-bound or leaves the
hardware idle.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

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
    from transformers.utils import logging

    logging.set_verbosity_error()  # generation-config notices would interleave with the table
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


def alternating(paths: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[tuple[Any, float]]]:
    """Time each path ``repeats`` times, in the order given, then reversed, and so on.

    With paths A, B and two repeats the order is A B B A: each path runs as often
    first as last. Returns each path's (result, seconds) in the order it ran.
    """
    runs: dict[str, list[tuple[Any, float]]] = {name: [] for name in paths}
    names = list(paths)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            runs[name].append(timed(paths[name]))
            print(f"  run {repeat + 1}/{repeats} of {name}: {runs[name][-1][1]:.1f} s wall", file=sys.stderr, flush=True)
    return runs


def best_seconds(runs: Sequence[tuple[Any, float]]) -> float:
    """The fastest of a path's timed runs: other load on a shared machine only ever adds time."""
    return min(seconds for _, seconds in runs)


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children, in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024 / 1024


def peak_line(peaks: Sequence[float]) -> str:
    shown = " / ".join(f"{p:.1f}" for p in peaks)
    when = "before / after the timings" if len(peaks) > 1 else "measured now"
    return f"matmul peak (fp32, {when}): {shown} GFLOPS"


def report(
    title: str,
    rows: list[dict[str, Any]],
    peaks: float | Sequence[float],
    extra: dict[str, Any] | None = None,
    path: Path | None = None,
) -> None:
    """Print a table: each path's rate, seconds, ratio, GFLOPS and share of the measured peak.

    The first row is the baseline. A row's ratio is its rate over the baseline's
    rate unless the row carries its own ``ratio`` with a ``ratio_note`` saying
    what it is (the early-stop row of the generation benchmark: a ratio of wall
    times). Shares of peak are against the larger of the peaks measured.
    """
    peaks = [peaks] if isinstance(peaks, (int, float)) else list(peaks)
    peak = max(peaks)
    print(f"\n== {title}")
    print(peak_line(peaks))
    baseline = rows[0]["rate"]
    for row in rows:
        row.setdefault("ratio", row["rate"] / baseline)
        gflops = row.get("gflops")
        share = f"{100 * gflops / peak:5.1f}% of peak" if gflops else ""
        note = f" ({row['ratio_note']})" if row.get("ratio_note") else ""
        print(
            f"  {row['name']:<52} {row['rate']:9.2f} {row['unit']:<22} {row['seconds']:8.1f} s  x{row['ratio']:6.2f}{note}   "
            + (f"{gflops:7.1f} GFLOPS {share}" if gflops else "")
        )
    for key, value in (extra or {}).items():
        print(f"  {key}: {value}")
    if path:
        path.write_text(json.dumps({"title": title, "peak_gflops": peaks, "rows": rows, **(extra or {})}, indent=2))
