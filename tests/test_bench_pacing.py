"""benchmarks/bench_decode_pacing.py on the tiny model: it loads the loop of a commit beside
this checkout's and compares completions token for token."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_decode_pacing as bench  # noqa: E402


def test_the_pacing_benchmark_runs_and_every_path_gives_the_baselines_completions(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "pacing.json"
    bench.main(["--model", str(tiny_model_dir), "--quick", "--repeats", "1", "--json", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [row["name"].split(" (")[0] for row in result["rows"]] == ["loop at HEAD", "CPU pacing", "CPU pacing on a static cache",
                                                                           "GPU pacing"]
    for row in result["rows"]:
        assert row["same_completions"] == "8/8" and row["seconds"] > 0
    assert "decode pacing: 8 prompts" in capsys.readouterr().out
