"""benchmarks/gpu_check.py in its reduced form on a CPU: every row runs and reports sane numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tamperaudit.config import EvalSettings

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_gpu_check_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMPERAUDIT_")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| row | shape | setting | tokens/s |" in done.stdout
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["device_type"] == "cpu" and result["tiny"] is True
    assert result["peak_tflops_used"] > 0
    rows = result["rows"]
    names = [row["name"] for row in rows]
    assert names == ["audit", "audit spread", "judge", "train 7B", "train 7B", "train 13B", "train 13B", "generate 7B",
                     "generate 7B per-step", "generate 7B HF dynamic", "generate 7B HF static", "audit quick 7B"]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["tokens_per_second"] > 0, row
        if row["name"] != "judge" and "HF" not in row["name"]:
            assert math.isfinite(row["mfu"]) and row["mfu"] > 0, row
        assert row["peak_gib"] is None or row["peak_gib"] >= 0, row
    for audit in rows[:2]:
        assert audit["exit_code"] == 0 and audit["report_status"] == "complete"
        assert audit["audit_device"] == "cpu" and audit["devices"] == ["cpu"]
    judge = rows[2]
    assert judge["judged"] == 64 and judge["judge_device"] == "cpu" and judge["judge_dtype"] == "float32"
    trains = rows[3:7]
    assert [row["plan"]["gradient_checkpointing"] for row in trains] == [False, True, False, True]
    assert [row["checkpointing_in_model"] for row in trains] == [False, True, False, True]
    for row in trains:
        assert row["timed_steps"] == result["training"]["timed_steps"]
        assert row["timed_tokens"] == row["timed_steps"] * result["training"]["sequences"] * result["training"]["length"]
        # same weights, data and seed: checkpointing recomputes, it does not change the losses
        assert row["loss_gap_to_other_checkpointing"] < 1e-4
    generated = rows[7]
    assert generated["generated_tokens"] == generated["expected_tokens"] and generated["rows_stopped_early"] == 0
    assert generated["batch_size"] == EvalSettings().batch_size == generated["prompts"]
    # a CPU reads every step, on transformers' DynamicCache: nothing to capture
    assert generated["pacing"] == "Pacing(check_every=1, compact_at=1.0, static=False, graphs=False, overlap=False)"
    assert generated["decode"] == "dynamic cache" and generated["graphs_captured"] == 0
    # the peers generate as many tokens from the same prompts; on a CPU there is no GPU-busy share
    for peer in rows[8:11]:
        assert peer["generated_tokens"] == generated["generated_tokens"] and peer["prompt_tokens"] == generated["prompt_tokens"]
        assert peer["gpu_busy"] is None and "gpu_busy_error" not in peer
        assert len(peer["token_digests"]) == generated["prompts"]
    assert rows[8]["token_digests"] == generated["token_digests"]  # on a CPU, the same loop
    assert "generate 7B against HF static:" in done.stdout and "the same tokens in" in done.stdout
    quick = rows[11]
    assert quick["report_status"] == "complete"
    assert set(quick["stage_seconds"]) == {"baseline", "attack", "budget-000005"} and all(  # --quick: budgets 0 and 5
        seconds > 0 for seconds in quick["stage_seconds"].values())
    assert "audit quick 7B: model built and saved in" in done.stdout
