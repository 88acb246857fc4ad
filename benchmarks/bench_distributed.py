"""One process against two: the same audit, trained data-parallel through accelerate launch.

    python benchmarks/bench_distributed.py [--model PATH] [--budgets 0,3,6] [--json out.json]

Runs the audit once in one process and once under ``accelerate launch --multi_gpu
--num_processes 2`` (CPU processes joined over gloo where there is no GPU), with the
adapters kept, and prints both wall times, their ratio, the largest adapter weight
difference at each budget and the training device-seconds, beside this machine's
float32 matmul peak. Without ``--model`` it builds the tiny random test model, so the
figure is the launcher's and the collectives' overhead, not a speed-up: on a 2-core CPU two
processes share the cores that one process would use alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import matmul_peak_gflops  # noqa: E402

from tamperaudit.testing import TINY_AUDIT_SETTINGS, build_tiny_model  # noqa: E402

ACCELERATE = Path(sys.executable).parent / "accelerate"


def audit(command_prefix: list[str], model: Path, out: Path, budgets: str, extra: list[str]) -> float:
    command = [*command_prefix, "-m", "tamperaudit", "audit", "--model", str(model), "--out", str(out),
               "--budgets", budgets, "--keep-adapters", "--quiet", *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def largest_difference(first: Path, second: Path) -> float:
    from safetensors.torch import load_file

    a = load_file(str(first / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(second / "adapter" / "adapter_model.safetensors"))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the tiny random test model)")
    parser.add_argument("--budgets", default="0,3,6")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = args.model or build_tiny_model(root / "tiny")
        extra = [*TINY_AUDIT_SETTINGS, "--set", "model.precision=float32", "--set", "attack.batch_size=4",
                 "--set", "attack.control=false"] if args.model is None else []
        peak_before = matmul_peak_gflops()
        one = audit([sys.executable], model, root / "one", args.budgets, extra)
        launcher = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no"]
        two = audit(launcher, model, root / "two", args.budgets, extra)
        peak_after = matmul_peak_gflops()
        budgets = [int(b) for b in args.budgets.split(",") if int(b) > 0]
        rows = []
        for budget in budgets:
            stage = f"budget-{budget:06d}"
            trains = [json.loads((root / run / stage / "train.json").read_text()) for run in ("one", "two")]
            rows.append({
                "budget": budget,
                "adapter_max_difference": largest_difference(root / "one" / stage, root / "two" / stage),
                "losses_max_difference": max(abs(a - b) for a, b in zip(trains[0]["losses"], trains[1]["losses"])),
                "training_device_seconds": [trains[0]["seconds"], trains[1]["seconds"]],
            })
    result = {"one_process_seconds": one, "two_processes_seconds": two, "ratio": two / one,
              "matmul_gflops_float32": [peak_before, peak_after], "budgets": rows}
    print(f"float32 matmul peak: {peak_before:.0f} GFLOPS before, {peak_after:.0f} after")
    print(f"audit wall time: 1 process {one:.1f} s, 2 processes {two:.1f} s (ratio {two / one:.2f})")
    for row in rows:
        print(f"  {row['budget']} steps: adapter weights differ by at most {row['adapter_max_difference']:.1e}, "
              f"losses by {row['losses_max_difference']:.1e}; training device-seconds "
              f"{row['training_device_seconds'][0]:.2f} (1 process) vs {row['training_device_seconds'][1]:.2f} (2)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
