"""The audit end to end: wall time and peak memory, and how both grow.

Runs whole audits in child processes (so each peak memory is its own): the
default audit and ``--quick`` (with --full), then small audits at two sizes of
the prompt sets and at two attack budgets (without the control arm, which would
double both sides of each ratio; ``--quick`` halves those prompt sets). Doubling
the prompts or the budget should at most double the time: the script prints
each ratio. Before the first audit the
model's weight files are read once, so that no audit alone pays for reading
them from disk. This machine's fp32 matmul peak, measured before and after the
audits, is printed beside the times (a drop means other load shared the CPU).

    python benchmarks/bench_audit.py [--full] [--quick] [--json out.json]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import arguments, matmul_peak_gflops, peak_line

SMALL = {"eval.harmful_limit": 22, "eval.benign_limit": 9, "eval.capability_limit": 24, "eval.kl_limit": 8}


def child(argv: list[str]) -> None:
    """Run one audit in this process and print its wall time and peak memory as JSON."""
    from tamperaudit.cli import main

    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(json.dumps({"code": code, "seconds": seconds, "peak_gb": peak}))


def run(argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, __file__, "--child", "audit", "--quiet", "--out", str(Path(folder) / "run"), *argv]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def read_weights(spec: str) -> None:
    """Read the model's files once, so every audit finds them in the page cache."""
    from tamperaudit import models, progress

    progress.set_quiet(True)
    for path in sorted(models.resolve_source(spec).folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def settings(values: dict) -> list[str]:
    return [part for key, value in values.items() for part in ("--set", f"{key}={value}")]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the default audit and --quick (tens of minutes)")
    args = parser.parse_args()
    read_weights(args.model)
    # One precision for every audit: 'auto' measures at each start, and a child that chose
    # differently would not be comparable with the others.
    import torch

    from tamperaudit.models import choose_precision

    precision = choose_precision("auto", torch.device("cpu"))
    print(f"precision for every audit: {precision.name} ({precision.reason})")
    pinned = ["--set", f"model.precision={precision.name}"]
    peaks = [matmul_peak_gflops()]
    results = {}
    if args.full:
        results["default audit"] = run(["--model", args.model, *pinned])
        results["--quick audit"] = run(["--model", args.model, "--quick", *pinned])
    single = {key: max(1, value // 2) for key, value in SMALL.items()} if args.quick else SMALL
    double = {key: 2 * value for key, value in single.items()}
    small = ["--model", args.model, "--no-control", *pinned]
    results["prompts x1 (budgets 0,2)"] = run([*small, "--budgets", "0,2", *settings(single)])
    results["prompts x2 (budgets 0,2)"] = run([*small, "--budgets", "0,2", *settings(double)])
    results["budget 4 (prompts x1)"] = run([*small, "--budgets", "0,4", *settings(single)])
    results["budget 8 (prompts x1)"] = run([*small, "--budgets", "0,8", *settings(single)])
    peaks.append(matmul_peak_gflops())
    print("\n== audit end to end (each in its own process)")
    print(peak_line(peaks))
    for name, result in results.items():
        print(f"  {name:<28} {result['seconds']:8.1f} s   peak {result['peak_gb']:.2f} GB")
    prompt_ratio = results["prompts x2 (budgets 0,2)"]["seconds"] / results["prompts x1 (budgets 0,2)"]["seconds"]
    budget_ratio = results["budget 8 (prompts x1)"]["seconds"] / results["budget 4 (prompts x1)"]["seconds"]
    print(f"  time ratio when the prompts double: {prompt_ratio:.2f} (linear growth would be at most 2)")
    print(f"  time ratio when the largest budget doubles: {budget_ratio:.2f} (linear growth would be at most 2)")
    if args.json:
        args.json.write_text(json.dumps({**results, "peak_gflops": peaks, "prompt_ratio": prompt_ratio, "budget_ratio": budget_ratio}, indent=2))


if __name__ == "__main__":
    main()
