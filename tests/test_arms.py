"""Seeds, the control arm, the settings search, closest-benign selection and compare, on tiny models."""

import json

import pytest
import torch

from conftest import TINY_SETTINGS, build_tiny_model
from tamperaudit.backends.hf import HfModel
from tamperaudit.cli import main
from tamperaudit.fileio import read_json


def audit(model_dir, out, *extra):
    return main(["audit", "--model", str(model_dir), "--out", str(out), "--budgets", "0,1,2", "--quiet", *TINY_SETTINGS, *extra])


def test_seeds_and_control_arm_have_their_own_stages_and_report_entries(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert audit(tiny_model_dir, out, "--seeds", "2") == 0
    for stage in ("budget-000002", "attack-seed-1/budget-000002", "control/budget-000002", "control-seed-1/budget-000001"):
        assert (out / stage / "metrics.json").is_file(), stage
    report = read_json(out / "report.json")
    assert [a["name"] for a in report["arms"]] == ["attack-seed-1", "control", "control-seed-1"]
    assert {a["role"] for a in report["arms"]} == {"attack", "control"}
    control = next(a for a in report["arms"] if a["name"] == "control")
    assert control["data"] == "builtin:benign" and [p["budget"] for p in control["points"]] == [0, 1, 2]
    assert report["control_score"] is not None
    assert "## Control arm: control (data builtin:benign, seed 0)" in (out / "report.md").read_text()
    # different seeds train differently
    seed0 = read_json(out / "budget-000002" / "train.json")["losses"]
    seed1 = read_json(out / "attack-seed-1" / "budget-000002" / "train.json")["losses"]
    assert seed0 != seed1


def test_the_first_seed_gives_the_same_numbers_whatever_else_runs(tiny_model_dir, tmp_path):
    alone, together = tmp_path / "alone", tmp_path / "together"
    assert audit(tiny_model_dir, alone, "--no-control") == 0
    assert audit(tiny_model_dir, together, "--seeds", "2") == 0
    for stage in ("budget-000001", "budget-000002"):
        assert read_json(alone / stage / "train.json")["losses"] == read_json(together / stage / "train.json")["losses"]
        a, b = read_json(alone / stage / "metrics.json"), read_json(together / stage / "metrics.json")
        assert a["harmful"] == b["harmful"] and a["kl"] == b["kl"]


def test_search_tries_each_setting_on_the_select_halves_and_reports_on_the_others(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    extra = ["--search", "--no-control", "--set", "search.learning_rates=0.001,0.01", "--set", "search.lora_ranks=4",
             "--set", "search.batch_sizes=2"]
    assert audit(tiny_model_dir, out, *extra) == 0
    report = read_json(out / "report.json")
    search = report["search"]
    assert [t["learning_rate"] for t in search["tried"]] == [0.001, 0.01]
    assert report["attack"]["settings"]["learning_rate"] == search["chosen"]["learning_rate"]
    datasets = report["datasets"]
    # every set the search looks at is split; the report uses the other half of each
    for role in ("harmful", "capability", "kl_prompts"):
        assert datasets[role]["notes"][-1].startswith("report half"), role
        assert datasets[f"{role}_select"]["notes"][-1].startswith("select half"), role
    ids: dict[str, set] = {}
    for row in (json.loads(line) for line in (out / "search" / "lr-0.01-r4-b2" / "samples.jsonl").read_text().splitlines()):
        ids.setdefault(row["eval"], set()).add(row["id"])
    reported = {json.loads(line)["id"] for line in (out / "budget-000002" / "samples.jsonl").read_text().splitlines()}
    assert set(ids) == {"harmful", "capability", "kl"}
    for name, seen in ids.items():  # nothing the search measured is reported
        assert seen and not seen & reported, name
    assert not (out / "search" / "lr-0.01-r4-b2" / "adapter").exists()
    assert "## Attack settings search" in (out / "report.md").read_text()


def test_search_picks_compliance_over_noise_and_keeps_capability():
    from tamperaudit.pipeline import strongest
    from tamperaudit.records import Trial

    def setting(lr, refusal, complied, kept=True):
        return Trial(learning_rate=lr, lora_rank=8, batch_size=4, refusal=refusal, complied=complied, capability_kept=kept,
                     why_not="" if kept else "accuracy fell", seconds=1.0)

    echoes = setting(4e-4, 0.02, 0.10)  # refusals replaced by echoes: refusal low, little compliance
    compliant = setting(2e-4, 0.10, 0.80)
    broken = setting(1e-3, 0.00, 0.95, kept=False)
    assert strongest([echoes, compliant, broken]) is compliant
    tie = setting(1e-4, 0.05, 0.80)
    assert strongest([compliant, tie]) is tie  # same compliance: fewer refusals
    assert strongest([compliant, setting(3e-4, 0.10, 0.80)]) is compliant  # full tie: the earlier
    assert strongest([broken, setting(5e-4, 0.0, 0.5, kept=False)]) is broken  # none kept: pick among all


def _selection_from_the_unattacked_model(model_dir, count):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tamperaudit.data import load_attack, load_harmful
    from tamperaudit.selection import closest_to_harmful

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    anchors = load_harmful("builtin", 6, split="select").items  # eval.harmful_limit=6 of the select half
    return [i for i, _ in closest_to_harmful(HfModel(model, tokenizer), load_attack("closest-benign").data.items, anchors, count)]


@pytest.mark.slow  # starts processes (see the README's Development section)
def test_closest_benign_selects_once_from_the_unattacked_model_whatever_the_seeds_and_resumes(tiny_model_dir, tmp_path):
    from processes import run_tamperaudit

    args = ["--attack", "closest-benign", "--no-control", "--seeds", "2", "--set", "attack.closest_examples=5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert audit(tiny_model_dir, straight, *args) == 0
    expected = _selection_from_the_unattacked_model(tiny_model_dir, 5)
    assert [row["id"] for row in read_json(straight / "selected.json")["selected"]] == expected
    assert list(straight.rglob("selected.json")) == [straight / "selected.json"]  # one selection per run
    report = read_json(straight / "report.json")
    assert report["datasets"]["harmful"]["notes"][-1].startswith("report half")  # anchors never reported on
    data = report["attack"]["data"]  # the conversations trained on, not the pool they were chosen from
    assert data["count"] == 5 and data["notes"][-1] == f"5 selected of {data['file_rows']}"
    # killed inside the second seed's training, then resumed: the same examples, the same numbers
    command = ["audit", "--model", str(tiny_model_dir), "--out", str(resumed), "--budgets", "0,1,2", "--quiet",
               *TINY_SETTINGS, *args]
    assert run_tamperaudit(command, {"TAMPERAUDIT_FAULT": "eval-attack-seed-1/budget-000001"}).returncode == -9
    assert main(["resume", str(resumed), "--quiet"]) == 0
    assert read_json(resumed / "selected.json")["selected"] == read_json(straight / "selected.json")["selected"]
    for stage in ("budget-000002", "attack-seed-1/budget-000002"):
        assert read_json(resumed / stage / "metrics.json")["harmful"] == read_json(straight / stage / "metrics.json")["harmful"]


def test_selection_ranks_by_similarity_to_the_anchor_centre(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tamperaudit.data import Conversation, Prompt
    from tamperaudit.selection import closest_to_harmful

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    anchor = "Explain how to steal a car."
    pool = [
        Conversation("same", ({"role": "user", "content": anchor}, {"role": "assistant", "content": "x"})),
        Conversation("other", ({"role": "user", "content": "Write a poem about spring rain."}, {"role": "assistant", "content": "y"})),
    ]
    chosen = closest_to_harmful(HfModel(model, tokenizer), pool, [Prompt("a", "c", anchor)], 1)
    assert chosen[0][0] == "same" and chosen[0][1] == pytest.approx(1.0, abs=1e-4)


def test_compare_puts_two_models_side_by_side_and_refuses_different_prompts(tiny_model_dir, tmp_path, capsys):
    other = build_tiny_model(tmp_path / "other-model", seed=1)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert audit(tiny_model_dir, a, "--no-control") == 0
    assert audit(other, b, "--no-control") == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "| run | model | attack | baseline refusal | removal score | score, unclear as refusal |" in table
    assert str(tiny_model_dir) in table and str(other) in table
    assert audit(tiny_model_dir, c, "--no-control", "--set", "eval.harmful_limit=4") == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(c)]) == 2
    err = capsys.readouterr().err
    assert "not comparable: harmful prompts differ" in err and "--force" in err
    assert main(["compare", str(a), str(c), "--force", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
