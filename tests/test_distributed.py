"""Data-parallel training through `accelerate launch`, on CPU processes joined over gloo.

The same audit of the tiny model runs in one process and in two; the two-process run's
adapters, losses and evaluations are compared with the one-process run's, and a run whose
processes are killed is finished by a single-process `tamperaudit resume`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_SETTINGS, adapters_in
from tamperaudit import distributed
from tamperaudit.attack import Example, share_of_batch
from tamperaudit.cli import main
from tamperaudit.fileio import read_json, read_jsonl

ACCELERATE = Path(sys.executable).parent / "accelerate"
BUDGETS = "0,3,6"
# attack.batch_size 4: two conversations per process and step; no control arm, to stay quick
SETTINGS = [*TINY_SETTINGS, "--set", "attack.batch_size=4", "--set", "attack.control=false"]
# Two processes sum their gradients in another order than one process does: float32 rounding.
ADAPTER_TOLERANCE = 1e-6


def audit_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", "--model", str(model_dir), "--out", str(out), "--budgets", BUDGETS, "--quiet", *SETTINGS, *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"


def launch(
    arguments: list[str], processes: int = 2, env: dict[str, str] | None = None, config: Path | None = None
) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N -m tamperaudit ...` (or with a config
    file): without a GPU, accelerate starts N CPU processes joined over gloo."""
    how = ["--config_file", str(config)] if config else ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no"]
    command = [
        str(ACCELERATE), "launch", *how, "--num_processes", str(processes), "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "tamperaudit", *arguments,
    ]
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(audit_args(tiny_model_dir, out, "--keep-adapters")) == 0
    return out


@pytest.fixture(scope="module")
def two_processes(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "run"
    result = launch(audit_args(tiny_model_dir, out, "--keep-adapters"), config=EXAMPLES / "ddp.yaml")  # as shipped
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def adapter_difference(first: Path, second: Path) -> float:
    from safetensors.torch import load_file

    a = load_file(str(first / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(second / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_a_step_is_split_over_the_processes_without_loss_or_overlap():
    batch = [Example(f"c{i}", tuple(range(n)), tuple(range(n))) for i, n in enumerate([5, 9, 2, 9, 7])]
    shares = [share_of_batch(batch, 2, index) for index in range(2)]
    assert sorted(e.id for share in shares for e in share) == sorted(e.id for e in batch)
    assert [len(share) for share in shares] == [3, 2]
    assert share_of_batch(batch, 1, 0) == batch  # one process: the step as it is


def test_one_process_needs_no_torch_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.current.cache_clear()
    processes = distributed.current()
    assert not processes.distributed and processes.is_main and processes.count == 1
    assert processes.sum(2.5) == 2.5 and processes.agree("x") == "x" and processes.on_main(lambda: 7) == 7
    assert not torch.distributed.is_initialized()


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_two_processes_train_the_adapters_of_one(one_process, two_processes):
    for budget in (3, 6):
        stage = f"budget-{budget:06d}"
        one, two = read_json(one_process / stage / "train.json"), read_json(two_processes / stage / "train.json")
        assert two["processes"] == 2 and one["processes"] == 1
        assert (two["steps"], two["examples"], two["tokens"], two["labelled_tokens"]) == (
            one["steps"], one["examples"], one["tokens"], one["labelled_tokens"]
        )
        assert two["losses"] == pytest.approx(one["losses"], abs=ADAPTER_TOLERANCE)
        difference = adapter_difference(one_process / stage, two_processes / stage)
        print(f"{stage}: largest adapter weight difference, 2 processes vs 1: {difference:.2e}")
        assert difference < ADAPTER_TOLERANCE


def _close(a, b, tolerance: float = 1e-4) -> bool:
    """Equal, with floats compared within ``tolerance`` (relative, and absolute near zero)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=tolerance, abs=1e-6)
    return a == b


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_two_processes_write_one_run_folder_with_the_same_evaluations(one_process, two_processes):
    # The main process evaluates alone, but accelerate launches every process with
    # OMP_NUM_THREADS=1: a one-process run at another thread count splits its float32 sums
    # otherwise, which on some CPUs (seen on an AMD EPYC) moves a log-probability in its fifth
    # decimal. So even the unattacked model's records are compared within rounding.
    for stage in ("baseline", "budget-000003", "budget-000006"):
        one, two = read_jsonl(one_process / stage / "samples.jsonl"), read_jsonl(two_processes / stage / "samples.jsonl")
        assert [s["id"] for s in two] == [s["id"] for s in one]  # one record per sample, in order
        for a, b in zip(one, two):  # same completions and verdicts; log-probabilities within rounding
            assert _close(a, b), (a, b)
    report = read_json(two_processes / "report.json")
    assert report["status"] == "complete"
    assert report["processes"] == {"processes": 2, "kind": "MULTI_CPU", "launcher": "accelerate"}
    assert report["hardware"]["processes"] == 2
    assert "data-parallel over 2 processes" in (two_processes / "report.md").read_text()
    sessions = read_json(two_processes / "manifest.json")["sessions"]
    assert [(s["outcome"], s["processes"]) for s in sessions] == [("complete", 2)]
    one_report = read_json(one_process / "report.json")
    assert _close(report["score"], one_report["score"]) and report["points"][2]["cost"]["tokens"] == one_report["points"][2]["cost"]["tokens"]
    # no stray files from the other process: the same names as the one-process run folder
    names = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))  # noqa: E731
    assert names(two_processes) == names(one_process)


def measured(root: Path) -> list:
    report = read_json(root / "report.json")
    return [{"budget": p["budget"], "metrics": {k: v for k, v in p["metrics"].items() if k != "throughput"}}
            for p in report["points"]]


@pytest.mark.slow  # starts processes (see the README's Development section)
@pytest.mark.parametrize(
    "fault, process",
    [("train-step-5", "1"), ("eval-budget-000003", "0")],
    ids=["second-process-killed-in-training", "main-process-killed-in-an-eval"],
)
def test_a_killed_process_then_a_single_process_resume_gives_the_same_metrics(
    tiny_model_dir, tmp_path, one_process, fault, process
):
    out = tmp_path / "run"
    result = launch(audit_args(tiny_model_dir, out), env={"TAMPERAUDIT_FAULT": fault, "TAMPERAUDIT_FAULT_PROCESS": process})
    assert result.returncode != 0
    assert "exitcode  : -9" in result.stderr, result.stderr[-3000:]  # SIGKILL, where the test put it
    manifest = read_json(out / "manifest.json")
    assert manifest["stages"]["baseline"]["state"] == "done"
    assert "budget-000006" not in manifest["stages"] or manifest["stages"]["budget-000006"]["state"] != "done"
    assert main(["resume", str(out), "--quiet"]) == 0
    assert _close(measured(out), measured(one_process))
    assert adapters_in(out) == []
    report = read_json(out / "report.json")
    assert report["status"] == "complete" and report["processes"]["processes"] == 1
    assert read_json(out / "budget-000003" / "train.json")["processes"] == 2


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_accelerates_cpu_flag_with_several_processes_is_refused_in_one_line(tiny_model_dir, tmp_path):
    # accelerate's --cpu launcher starts one process for --num_processes 2 and leaves the rest to
    # mpirun: an audit would quietly run alone, so it is refused
    command = [str(ACCELERATE), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
               "no", "--dynamo_backend", "no", "-m", "tamperaudit", *audit_args(tiny_model_dir, tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "tamperaudit: error: accelerate launch --cpu started one process" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_only_audit_and_resume_run_under_several_processes(tiny_model_dir, tmp_path):
    result = launch(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "eval"), "--quiet", *TINY_SETTINGS])
    assert result.returncode != 0
    assert "tamperaudit: error: `tamperaudit eval` runs in one process" in result.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_a_batch_smaller_than_the_process_count_is_refused(tiny_model_dir, tmp_path):
    result = launch(audit_args(tiny_model_dir, tmp_path / "run", "--set", "attack.batch_size=1"))
    assert result.returncode != 0
    assert "attack.batch_size=1 is below the 2 processes launched" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written


FSDP_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
use_cpu: true
mixed_precision: "no"
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: Qwen2DecoderLayer
  fsdp_state_dict_type: FULL_STATE_DICT
"""


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_a_sharded_config_is_refused_in_one_line(tiny_model_dir, tmp_path):
    # On a CPU accelerate would quietly train this FSDP config as plain data parallelism;
    # on a GPU it would shard the weights the main-process evaluations need whole.
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_CONFIG)
    result = launch(audit_args(tiny_model_dir, tmp_path / "run"), config=config)
    assert result.returncode != 0
    assert "tamperaudit: error: accelerate is configured for FSDP; tamperaudit trains data-parallel only" in result.stderr
    assert not (tmp_path / "run").exists()
