"""The TPE settings search (``search.method = "tpe"``) on constructed spaces, without a model:
it finds the known best within its trial budget, never chooses an infeasible trial, and a
study killed mid-trial resumes to the same trials. The tiny-model audits with it are in
test_scored_path.py (the pick, through the pipeline) and test_faults.py (SIGKILL, resume)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tamperaudit.config import SearchSettings
from tamperaudit.errors import UserError
from tamperaudit.pipeline import strongest
from tamperaudit.records import Candidate, Trial
from tamperaudit.score import pareto_front

optuna = pytest.importorskip("optuna", reason="the [search] extra (Optuna) is not installed")

from tamperaudit import search_tpe  # noqa: E402  (after the skip: it needs Optuna only when used)

SPACE = SearchSettings(enabled=True, method="tpe", trials=20, learning_rates=(1e-5, 1e-1), lora_ranks=(4, 8, 16),
                       batch_sizes=(2, 4))
BEST_RATE = 3e-3


def complied_share(candidate: Candidate) -> float:
    """A peak at BEST_RATE, rank 16, batch 4: 1.0 there, falling with the distance in decades,
    and lower for other ranks and batch sizes."""
    distance = abs(math.log10(candidate.learning_rate / BEST_RATE))
    share = max(0.0, 1.0 - 0.5 * distance) - 0.2 * (candidate.lora_rank != 16) - 0.1 * (candidate.batch_size != 4)
    return max(0.0, share)


def trial(candidate: Candidate, complied: float, kept: bool = True, cost: float = 0.1) -> Trial:
    return Trial(learning_rate=candidate.learning_rate, lora_rank=candidate.lora_rank, batch_size=candidate.batch_size,
                 refusal=1.0 - complied, complied=complied, capability_kept=kept, why_not="" if kept else "KL 3 > 0.5",
                 seconds=0.0, capability_cost=cost)


def peaked(candidate: Candidate) -> Trial:
    return trial(candidate, complied_share(candidate), cost=candidate.learning_rate)


def test_tpe_finds_the_known_best_within_its_budget(tmp_path):
    tried = search_tpe.tpe_search(SPACE, 0, tmp_path, "study", peaked)
    assert len(tried) == SPACE.trials
    best = strongest(tried)
    # within 0.1 decade of the peak, with its rank and batch size
    assert (best.lora_rank, best.batch_size) == (16, 4) and best.complied >= 0.95, best
    # and better than the same number of settings spread evenly: the log-spaced grid the user would write
    rates = [10 ** (-5 + 4 * k / 3) for k in range(4)]  # 1e-5 ... 1e-1, 4 rates x 3 ranks x 2 batches = 24
    grid = [peaked(Candidate(learning_rate=r, lora_rank=k, batch_size=b)) for r in rates for k in (4, 8, 16)
            for b in (2, 4)]
    assert best.complied > strongest(grid).complied


def test_an_infeasible_trial_is_never_chosen_however_compliant(tmp_path):
    def breaks_above(candidate: Candidate) -> Trial:  # the most compliant settings break capability
        return trial(candidate, complied_share(candidate), kept=candidate.learning_rate < 1e-3,
                     cost=candidate.learning_rate)

    tried = search_tpe.tpe_search(dataclasses.replace(SPACE, trials=12), 1, tmp_path, "study", breaks_above)
    feasible = [t for t in tried if t.capability_kept]
    assert feasible and any(not t.capability_kept and t.complied > max(f.complied for f in feasible) for t in tried)
    chosen = strongest(tried)
    assert chosen.capability_kept and chosen.learning_rate < 1e-3
    assert all(t.capability_kept for t in pareto_front(tried))


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, the study is left as it was."""


def test_a_study_killed_mid_trial_resumes_to_the_same_trials(tmp_path):
    space = dataclasses.replace(SPACE, trials=8)
    straight = search_tpe.tpe_search(space, 7, tmp_path / "straight", "study", peaked)
    asked: list[Candidate] = []

    def dies_in_the_fifth(candidate: Candidate) -> Trial:
        asked.append(candidate)
        if len(asked) == 5:
            raise Killed
        return peaked(candidate)

    with pytest.raises(Killed):
        search_tpe.tpe_search(space, 7, tmp_path / "killed", "study", dies_in_the_fifth)
    again: list[Candidate] = []

    def counted(candidate: Candidate) -> Trial:
        again.append(candidate)
        return peaked(candidate)

    resumed = search_tpe.tpe_search(space, 7, tmp_path / "killed", "study", counted)
    assert resumed == straight
    assert again[0] == asked[4]  # the trial that died is asked again first
    assert len(again) == 4  # and the four that finished are not repeated


def test_the_space_and_its_rounding():
    assert search_tpe.round_rate(0.000123456) == 0.000123
    assert [search_tpe.startup_trials(n) for n in (1, 6, 12, 60)] == [2, 2, 4, 10]
    assert SearchSettings(method="tpe", trials=0).trial_count() == 6  # the grid's size
    assert SearchSettings(method="tpe", trials=9).trial_count() == 9
    assert SearchSettings(method="grid", trials=9).trial_count() == 6


def test_without_optuna_the_error_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna" or name.startswith("optuna."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(UserError, match=r"pip install 'tamperaudit\[search\]'"):
        search_tpe.tpe_search(SPACE, 0, __import__("pathlib").Path("/nonexistent"), "study", peaked)
