"""The attack settings search by Optuna's TPE sampler (``search.method = "tpe"``).

The space: the learning rate log-uniform between the smallest and the largest of
``search.learning_rates``, the LoRA rank from ``search.lora_ranks`` and the batch size from
``search.batch_sizes``. Each trial is trained to the largest budget and measured on the
select halves exactly as a grid candidate is (``measure``); the study has two objectives,
compliance (maximised) and capability cost (minimised: mean KL to the unattacked model on
the select half, or the fall in multiple-choice accuracy where KL is not measured), and a
trial that breaks the capability bound is infeasible (an Optuna constraint), which the
sampler learns from and the pick (``pipeline.strongest``) never takes while a feasible one
exists.

The study lives in the run folder as Optuna's journal file, named after the run's inputs.
A search that was killed resumes it: finished trials are not repeated, and a trial that died
is marked failed and asked again (a trial measured but not yet told is read back from its
stage). The sampler is seeded with the run's seed plus the number of finished trials, and
ignores failed ones, so a resumed study asks what an uninterrupted one would have asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from tamperaudit import faults
from tamperaudit.config import SearchSettings
from tamperaudit.distributed import Processes
from tamperaudit.errors import UserError
from tamperaudit.records import Candidate, Trial

INSTALL = "pip install 'tamperaudit[search]'"
STUDY_FILE = "study.journal"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError(f"search.method = 'tpe' needs Optuna: {INSTALL} (or search.method = 'grid')") from None
    optuna.logging.set_verbosity(logging.WARNING)  # our progress bars say what runs
    return optuna


def startup_trials(trials: int) -> int:
    """Trials sampled at random before TPE models the results: a third of the budget, 2 to 10."""
    return max(2, min(10, trials // 3))


def round_rate(value: float) -> float:
    """Three significant digits: readable stage names, and a resumed trial rebuilds the same one."""
    return float(f"{value:.3g}")


def _candidate(trial: Any, search: SearchSettings) -> Candidate:
    low, high = min(search.learning_rates), max(search.learning_rates)
    rate = trial.suggest_float("learning_rate", low, high, log=True) if low < high else low
    rank = trial.suggest_categorical("lora_rank", list(search.lora_ranks))
    batch = trial.suggest_categorical("batch_size", list(search.batch_sizes))
    return Candidate(learning_rate=round_rate(rate), lora_rank=int(rank), batch_size=int(batch))


def tpe_search(
    search: SearchSettings, seed: int, folder: Path, study_name: str, measure: Callable[[Candidate], Trial],
    processes: Processes | None = None,
) -> list[Trial]:
    """Run (or resume) the study in ``folder`` until ``search.trials`` trials finished; every
    finished trial, in the order it was asked.

    Under several processes only the main one opens the study; it asks, every process trains
    and measures the setting it was sent (``measure``), and the main one tells.
    """
    processes = processes or Processes()
    study: Any = _open_study(search, seed, folder, study_name) if processes.is_main else None
    while True:
        trial = study.next_trial() if study is not None else None
        candidate = processes.agree(trial.candidate if trial is not None else None)
        if candidate is None:
            break
        tried = measure(candidate)
        if trial is not None:
            study.tell(trial, tried)
    return processes.agree(study.finished() if study is not None else [])


class _Study:
    """The Optuna study behind one search: ask with a sampler seeded by how far it got, tell
    with the trial's two objectives and its feasibility."""

    def __init__(self, optuna: Any, storage: Any, search: SearchSettings, seed: int, name: str) -> None:
        self.optuna, self.storage, self.search, self.seed, self.name = optuna, storage, search, seed, name
        from optuna.trial import TrialState

        self.states = TrialState
        study = self._study(0)
        for died in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # killed mid-trial; the sampler, seeded by the finished count, asks its setting again
            study.tell(died.number, state=TrialState.FAIL)

    def _study(self, finished: int) -> Any:
        sampler = self.optuna.samplers.TPESampler(
            seed=self.seed + finished, n_startup_trials=startup_trials(self.search.trials))
        return self.optuna.create_study(study_name=self.name, storage=self.storage, sampler=sampler,
                                        load_if_exists=True, directions=["maximize", "minimize"])

    def _complete(self) -> list[Any]:
        done = self._study(0).get_trials(deepcopy=False, states=(self.states.COMPLETE,))
        return sorted(done, key=lambda t: t.number)

    def next_trial(self) -> "_Asked | None":
        finished = len(self._complete())
        if finished >= self.search.trials:
            return None
        trial = self._study(finished).ask()
        faults.checkpoint(f"search-asked-{finished + 1}")
        return _Asked(trial, _candidate(trial, self.search))

    def tell(self, asked: "_Asked", tried: Trial) -> None:
        trial = asked.trial
        trial.set_constraint("capability_bound", 0.0 if tried.capability_kept else 1.0)  # > 0: infeasible
        trial.set_user_attr("trial", tried.to_json())
        trial.study.tell(trial, [tried.complied or 0.0, tried.capability_cost or 0.0])

    def finished(self) -> list[Trial]:
        return [Trial.from_json(t.user_attrs["trial"]) for t in self._complete()]


@dataclass(frozen=True)
class _Asked:
    trial: Any
    candidate: Candidate


def _open_study(search: SearchSettings, seed: int, folder: Path, name: str) -> _Study:
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    folder.mkdir(parents=True, exist_ok=True)
    return _Study(optuna, JournalStorage(JournalFileBackend(str(folder / STUDY_FILE))), search, seed, name)
