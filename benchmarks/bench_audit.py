"""The audit end to end: wall time and peak memory, and how both grow.

Runs whole audits in child processes (so each peak memory is its own): the
default audit and ``--quick`` (with --full), then small audits at two sizes of
the prompt sets and at two attack budgets (without the control arm, which would
double both sides of each ratio). Doubling the prompts or the budget should at
most double the time: the script prints each ratio.

    python benchmarks/bench_audit.py [--full] [--json out.json]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import arguments

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


def settings(values: dict) -> list[str]:
    return [part for key, value in values.items() for part in ("--set", f"{key}={value}")]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the default audit and --quick (tens of minutes)")
    args = parser.parse_args()
    results = {}
    if args.full:
        results["default audit"] = run(["--model", args.model])
        results["--quick audit"] = run(["--model", args.model, "--quick"])
    double = {key: 2 * value for key, value in SMALL.items()}
    small = ["--model", args.model, "--no-control"]
    results["prompts x1 (budgets 0,2)"] = run([*small, "--budgets", "0,2", *settings(SMALL)])
    results["prompts x2 (budgets 0,2)"] = run([*small, "--budgets", "0,2", *settings(double)])
    results["budget 4 (prompts x1)"] = run([*small, "--budgets", "0,4", *settings(SMALL)])
    results["budget 8 (prompts x1)"] = run([*small, "--budgets", "0,8", *settings(SMALL)])
    print("\n== audit end to end (each in its own process)")
    for name, result in results.items():
        print(f"  {name:<28} {result['seconds']:8.1f} s   peak {result['peak_gb']:.2f} GB")
    prompt_ratio = results["prompts x2 (budgets 0,2)"]["seconds"] / results["prompts x1 (budgets 0,2)"]["seconds"]
    budget_ratio = results["budget 8 (prompts x1)"]["seconds"] / results["budget 4 (prompts x1)"]["seconds"]
    print(f"  time ratio when the prompts double: {prompt_ratio:.2f} (linear growth would be at most 2)")
    print(f"  time ratio when the largest budget doubles: {budget_ratio:.2f} (linear growth would be at most 2)")
    if args.json:
        args.json.write_text(json.dumps({**results, "prompt_ratio": prompt_ratio, "budget_ratio": budget_ratio}, indent=2))


if __name__ == "__main__":
    main()
