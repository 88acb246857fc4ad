"""Capability measured by lm-evaluation-harness, on the in-memory model with its adapter active.

``--capability lm-eval:TASK[,TASK...]`` (``eval.capability``) scores the capability
questions at baseline and at every budget with lm-evaluation-harness instead of
tamperaudit's own scorer: ``HFLM(pretrained=<the model as it is in memory>)``, so
the LoRA adapter of the budget being measured is active, with no merge, no second
copy of the weights and no model download. Its per-question results become
capability samples of the same shape as ``score_questions`` writes, so the
capability bound, the bootstrap interval and the report work unchanged; its own
figures (metric values with lm-eval's standard errors, task versions, few-shot
counts) go into each stage's ``metrics.json`` under ``lm_eval``.

Tasks are resolved once per process, before the model loads (an unknown name
stops the run at once): lm-eval's built-in tasks, plus the task YAMLs of
``eval.lm_eval_tasks_dir``. ``eval.capability_limit`` is lm-eval's ``limit`` (the
first N documents of each task; 0: all). A settings search splits each task's
documents into select/report halves by id, like every other probe set; lm-eval
then scores exactly those documents (its ``samples`` argument).

lm-eval is an optional dependency (``pip install 'tamperaudit[lm-eval]'``), imported
only when such a capability is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from tamperaudit import faults, progress
from tamperaudit.backends.hf import HfModel
from tamperaudit.errors import UserError
from tamperaudit.records import ChoiceSample, ChoiceThroughput, DatasetDescription, HarnessFigures, HarnessTask, MetricValue

PREFIX = "lm-eval:"
INSTALL = "pip install 'tamperaudit[lm-eval]'"
FORMAT = "lm-eval"

# Per forward pass lm-eval scores batch_size (context + choice) sequences with full-vocabulary
# logits at every position (about 0.6 GB for 8 ARC-sized rows of a 150k-token vocabulary in
# float32), so the batch is kept as small as tamperaudit's own scorer's.
BATCH_SIZE = 8

# lm-eval's own default seeds, fixed here so that the same model always gives the same
# samples (few-shot example choice, and any sampling a task does); the caller's random
# state is restored afterwards, so measuring never changes what a later training draws.
SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}

# Standard errors of mean metrics (acc, acc_norm) are analytic; this bounds the bootstrap
# that lm-eval runs for other aggregations (f1, mcc, ...), which at its default of 100,000
# resamples would cost minutes at every budget.
BOOTSTRAP_ITERS = 1000


def is_harness(spec: str) -> bool:
    """Whether a capability setting asks for lm-evaluation-harness tasks."""
    return spec.startswith(PREFIX)


def task_names(spec: str) -> list[str]:
    names = [name.strip() for name in spec[len(PREFIX) :].split(",") if name.strip()]
    if not names:
        raise UserError(f"--capability {spec!r}: name at least one lm-eval task, e.g. lm-eval:arc_easy or lm-eval:arc_easy,piqa")
    if len(set(names)) != len(names):
        raise UserError(f"--capability {spec!r}: a task is named twice")
    return names


def _lm_eval() -> Any:
    """The lm_eval package, or a one-line error saying how to install it."""
    try:
        import lm_eval
        import lm_eval.api.model
        import lm_eval.models.huggingface
        import lm_eval.tasks
    except ImportError as error:
        raise UserError(
            f"--capability lm-eval:... needs lm-evaluation-harness, which is not installed "
            f"({error.name or error}); install it with: {INSTALL}"
        ) from None
    return lm_eval


@dataclass(frozen=True)
class HarnessTasks:
    """lm-eval tasks resolved for one run: what is scored, pinned by hash.

    It stands where a ``Dataset`` of questions stands in the probes (``name``,
    ``sha256``, ``describe()``), so the manifest, ``resume``'s input check and the
    report's data section treat it like any other set.
    """

    spec: str  # the setting as given, "lm-eval:arc_easy,piqa"
    names: tuple[str, ...]  # the tasks scored (a group or tag expands to its tasks), in order
    limit: int  # lm-eval's limit per task; 0: every document
    split: str  # all, select or report (halves of each task's documents, by id)
    docs: dict[str, tuple[int, ...]]  # the document ids scored, per task
    totals: dict[str, int]  # documents in each task's evaluation split
    sha256: str  # lm-eval version, task names, limit, resolved configs, documents, local task files
    version: str  # lm-eval's version
    tasks_dir: str  # eval.lm_eval_tasks_dir ("" when none)
    tasks: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # lm-eval Task objects

    @property
    def name(self) -> str:
        return self.spec

    @property
    def path(self) -> str:
        return self.tasks_dir

    @property
    def items(self) -> tuple[()]:  # no tamperaudit questions: lm-eval builds its own requests
        return ()

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.docs.values())

    def sample_ids(self) -> list[str]:
        return [sample_id(task, doc) for task, ids in self.docs.items() for doc in ids]

    def half(self, split: str) -> "HarnessTasks":
        """The ``select`` or ``report`` half of each task's documents, fixed per task from each
        document's id (``tamperaudit.data.split_halves``), then the first ``limit`` of the half."""
        from tamperaudit.data import split_halves

        everything = [_Doc(sample_id(task, doc), task) for task in self.names for doc in range(self.totals[task])]
        halves = split_halves(everything)
        docs = {}
        for task in self.names:
            ids = [doc for doc in range(self.totals[task]) if halves[sample_id(task, doc)] == split]
            docs[task] = tuple(ids[: self.limit] if self.limit > 0 else ids)
        return dataclasses.replace(self, split=split, docs=docs)

    def describe(self) -> DatasetDescription:
        """The same fields as ``Dataset.describe``, for the report's data section."""
        count = len(self)
        notes = [f"lm-evaluation-harness {self.version}: {', '.join(self.names)}"]
        notes.append(f"first {self.limit} documents of each task" if self.limit > 0 else "every document of each task")
        if self.tasks_dir:
            notes.append(f"local task YAMLs from {self.tasks_dir}")
        if self.split != "all":  # last, as a Dataset's split note is
            notes.append(f"{self.split} half: {count} of {sum(self.totals.values())} documents")
        return DatasetDescription(
            name=self.spec, path=self.tasks_dir, sha256=self.sha256,
            ids_sha256=hashlib.sha256("\n".join(self.sample_ids()).encode()).hexdigest(),
            count=count, file_rows=sum(self.totals.values()), format=FORMAT, notes=notes,
            categories={task: len(ids) for task, ids in self.docs.items()},
        )


@dataclass(frozen=True)
class _Doc:  # what split_halves reads of an item
    id: str
    category: str


def sample_id(task: str, doc: int) -> str:
    return f"{task}/{doc}"


# --- resolving tasks -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's INFO lines (seeds, task lists, request counts) and the datasets library's
    progress bars, on every budget, are noise next to tamperaudit's own bars: warnings and
    errors only while lm-eval works. The in-memory model is passed on purpose, so lm-eval's
    warning that some model arguments are then ignored is dropped too."""
    import datasets
    import warnings

    harness = logging.getLogger("lm_eval")
    level = harness.level
    if harness.getEffectiveLevel() < logging.WARNING:
        harness.setLevel(logging.WARNING)
    model_logger = logging.getLogger("lm_eval.models.huggingface")
    model_logger.addFilter(_in_memory_model_warning)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    # lm-eval draws an unlabelled bar, deaf to --quiet, while it builds each task's requests
    # (Task.build_all_requests has no switch for it); tamperaudit's own bar shows the scoring.
    import lm_eval.api.task as task_module

    building_bar = getattr(task_module, "tqdm", None)
    if building_bar is not None:
        task_module.tqdm = functools.partial(building_bar, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="lm_eval")
            yield
    finally:
        if building_bar is not None:
            task_module.tqdm = building_bar
        harness.setLevel(level)
        model_logger.removeFilter(_in_memory_model_warning)
        if bars:
            datasets.utils.logging.enable_progress_bar()


# What lm-eval says because the model is passed in memory, which tamperaudit does on purpose.
_EXPECTED_WARNINGS = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model through `pretrained`")


def _in_memory_model_warning(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(expected in message for expected in _EXPECTED_WARNINGS)


def _load(lm_eval: Any, names: Sequence[str], tasks_dir: str) -> dict[str, Any]:
    """The named tasks, loaded. Indexing lm-eval's own few thousand task YAMLs takes about
    10 s on 2 CPU cores, so when every name is a task of eval.lm_eval_tasks_dir the index
    holds that folder alone (its YAMLs may still ``include:`` lm-eval's by path); otherwise,
    or if that fails (a local group of lm-eval's own tasks), lm-eval's tasks and the folder's."""
    folder = Path(tasks_dir).expanduser() if tasks_dir else None
    if folder is not None and not folder.is_dir():
        raise UserError(f"eval.lm_eval_tasks_dir={tasks_dir}: not a folder (it should hold lm-eval task YAML files)")
    if folder is not None:
        local = lm_eval.tasks.TaskManager(include_path=str(folder), include_defaults=False)
        if set(names) <= set(local.all_tasks):
            try:
                return _leaf_tasks(lm_eval, local, names)
            except Exception:  # noqa: BLE001 - loaded again below with the whole index, which reports it
                pass
    manager = lm_eval.tasks.TaskManager(include_path=str(folder) if folder is not None else None)
    _check_known(manager, names, tasks_dir)
    try:
        return _leaf_tasks(lm_eval, manager, names)
    except Exception as error:  # noqa: BLE001 - what the datasets library raises varies by release
        if _unreachable(error):
            raise UserError(_offline_message(names, error)) from None
        if isinstance(error, (FileNotFoundError, ValueError, KeyError)):  # a local data file gone, a bad YAML
            raise UserError(f"lm-eval could not load {', '.join(names)}: {error}") from None
        raise


_REPOSITORY = re.compile(r"['\"]([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)['\"]")


def _unreachable(error: BaseException) -> bool:
    """A failure to reach the Hugging Face Hub for a task's data (no network, or offline mode)."""
    if isinstance(error, ConnectionError):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
                         "ReadTimeout", "DatasetNotFoundError"})


def _offline_message(names: Sequence[str], error: BaseException) -> str:
    found = _REPOSITORY.search(str(error))
    dataset = f"the dataset {found.group(1)}" if found else "its dataset"
    return (
        f"lm-eval task {', '.join(names)} needs {dataset} from the Hugging Face Hub, which could not be reached; "
        "run it once where the Hub is reachable (the datasets library keeps a copy), or write a local task over a "
        "file of your own and name its folder in eval.lm_eval_tasks_dir (README, 'Your own task')"
    )


def _check_known(manager: Any, names: Sequence[str], tasks_dir: str) -> None:
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            where = f" or in eval.lm_eval_tasks_dir={tasks_dir}" if tasks_dir else ""
            raise UserError(
                f"lm-eval task '{name}' not found among lm-eval's tasks{where}{hint}; `lm-eval ls tasks` lists "
                "them (`lm_eval --tasks list` before lm-eval 0.4.11), and eval.lm_eval_tasks_dir adds a folder of your own task YAMLs"
            )


def _leaf_tasks(lm_eval: Any, manager: Any, names: Sequence[str]) -> dict[str, Any]:
    """Task objects by name, groups and tags expanded to their tasks."""
    if hasattr(manager, "load"):  # lm-eval 0.4.12 on: flat dicts of tasks and groups
        return dict(manager.load(list(names))["tasks"])
    tasks: dict[str, Any] = {}

    def flatten(nested: dict[Any, Any]) -> None:
        for key, value in nested.items():
            if isinstance(value, dict):
                flatten(value)
            elif value is not None:  # a group's own entry may be None
                tasks[key] = value

    flatten(lm_eval.tasks.get_task_dict(list(names), manager))
    return tasks


def _metric_names(task: Any) -> list[str]:
    metrics = getattr(task, "_metric_fn_list", None)
    if metrics:
        return list(metrics)
    return [m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str)]


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _config_text(task: Any) -> str:
    """A task's resolved configuration as stable text (functions by their source)."""
    text = json.dumps(task.dump_config(), sort_keys=True, default=str, ensure_ascii=False)
    return _ADDRESS.sub("", text)  # a function whose source cannot be read prints its address


def _local_files(config: dict[str, Any]) -> list[Path]:
    """Local files a task reads its documents from (``dataset_path`` a folder or file,
    ``dataset_kwargs.data_files`` / ``data_dir``)."""
    candidates: list[Any] = [config.get("dataset_path")]
    kwargs = config.get("dataset_kwargs") or {}
    for key in ("data_files", "data_dir"):
        value = kwargs.get(key)
        if isinstance(value, dict):
            candidates += list(value.values())
        else:
            candidates.append(value)
    flat: list[str] = []
    for value in candidates:
        flat += value if isinstance(value, list) else [value]
    return [Path(v).expanduser() for v in flat if isinstance(v, str) and "://" not in v and Path(v).expanduser().exists()]


def _hash(version: str, names: Sequence[str], limit: int, tasks: dict[str, Any], tasks_dir: str) -> str:
    """SHA-256 over what the scores depend on: lm-eval's version, the task names, the limit,
    each task's resolved configuration, the documents it evaluates (and its few-shot source
    when it uses one), the local data files it names and, with eval.lm_eval_tasks_dir, every
    file of that folder (YAMLs and the Python they import)."""
    from tamperaudit.data import path_sha256

    digest = hashlib.sha256()

    def add(label: str, text: str) -> None:
        digest.update(f"{label}\0{len(text)}\0".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))

    add("lm_eval", version)
    add("limit", str(limit))
    for name in names:
        task = tasks[name]
        add("task", name)
        add("config", _config_text(task))
        docs = hashlib.sha256()
        for doc in task.eval_docs:
            docs.update(json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode() + b"\n")
        add("docs", docs.hexdigest())
        if (task.get_config("num_fewshot") or 0) > 0:
            shots = hashlib.sha256()
            for doc in task.fewshot_docs() or []:
                shots.update(json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False).encode() + b"\n")
            add("fewshot", shots.hexdigest())
        for path in _local_files(task.dump_config()):
            add("file", f"{path}:{path_sha256(path)}")
    if tasks_dir:
        add("tasks_dir", path_sha256(Path(tasks_dir).expanduser()))
    return digest.hexdigest()


def resolve_tasks(spec: str, limit: int = 0, tasks_dir: str = "") -> HarnessTasks:
    """The tasks of ``lm-eval:TASK[,TASK...]``, loaded (their documents included) and pinned.

    One-line errors: lm-eval not installed, an unknown task name, a task that reports no
    per-question accuracy (``acc``), which tamperaudit's capability bound needs.
    """
    names = task_names(spec)
    if limit < 0:
        raise UserError("'eval.capability_limit' must be 0 (all) or a number of documents per task")
    lm_eval = _lm_eval()
    with _quiet():
        tasks = _load(lm_eval, names, tasks_dir)
    for name, task in tasks.items():
        metrics = _metric_names(task)
        if "acc" not in metrics:
            raise UserError(
                f"lm-eval task '{name}' reports {', '.join(metrics) or 'no metric'} but not per-question accuracy (acc); "
                "tamperaudit's capability bound needs it: use multiple-choice tasks (output_type: multiple_choice)"
            )
        if task.get_config("num_fewshot") is None:  # as lm-eval's simple_evaluate does: 0 unless the task sets it
            task.set_config(key="num_fewshot", value=0)
    totals = {name: len(task.eval_docs) for name, task in tasks.items()}
    docs = {name: tuple(range(min(limit, total) if limit > 0 else total)) for name, total in totals.items()}
    version = lm_eval.__version__
    return HarnessTasks(
        spec=spec, names=tuple(tasks), limit=limit, split="all", docs=docs, totals=totals,
        sha256=_hash(version, list(tasks), limit, tasks, tasks_dir), version=version, tasks_dir=tasks_dir, tasks=tasks,
    )


# --- scoring -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _as_found(model: Any) -> Iterator[None]:
    """Eval mode and fixed seeds while lm-eval runs; afterwards every module's training flag
    and the random generators are as they were (lm-eval seeds the global ones)."""
    import numpy as np
    import torch

    modes = [(module, module.training) for module in model.modules()]
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    random.seed(SEEDS["random"])
    np.random.seed(SEEDS["numpy"])
    torch.manual_seed(SEEDS["torch"])
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _language_model(lm_eval: Any, model: Any, tokenizer: Any, batch_size: int, description: str) -> Any:
    """lm-eval's HFLM around the in-memory model, its progress on a tamperaudit bar."""
    base, hook_class = lm_eval.models.huggingface.HFLM, lm_eval.api.model.CacheHook

    class ProgressHook(hook_class):  # lm-eval calls it once per scored request
        bar: Any = None

        def __init__(self) -> None:
            super().__init__(None)

        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            if self.bar is not None:
                self.bar.update(1)
            faults.checkpoint("multiple-choice")

    class InMemoryLM(base):
        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            with progress.bar(total=len(requests), desc=description, unit="choice") as bar:
                hook.bar = bar
                try:
                    return super().loglikelihood(requests, disable_tqdm=True)
                finally:
                    hook.bar = None

        def get_model_info(self) -> dict[str, Any]:  # no Hub lookup of a model that has no Hub name
            return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()), "model_dtype": str(self.model.dtype)}

    hook = ProgressHook()
    lm = InMemoryLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    lm.set_cache_hook(hook)
    return lm


def score_tasks(
    hf: HfModel, tasks: HarnessTasks, batch_size: int = BATCH_SIZE, label: str = ""
) -> tuple[list[ChoiceSample], ChoiceThroughput, HarnessFigures]:
    """lm-eval on the transformers model as it is in memory (adapter active): per-question
    capability samples in ``score_questions``'s shape, throughput, and lm-eval's own figures.

    The model is put in eval mode for the run and left as found (training flags, adapter).
    Same model and tasks, same samples.
    """
    import torch

    model, tokenizer = hf.model, hf.tokenizer
    lm_eval = _lm_eval()
    start = time.perf_counter()
    every = tasks.split == "all"  # the first `limit` documents: lm-eval's own limit; a half: those documents
    with _quiet(), _as_found(model):
        lm = _language_model(lm_eval, model, tokenizer, batch_size, f"{label}lm-eval {','.join(tasks.names)}")
        for task in tasks.tasks.values():
            task.set_fewshot_seed(seed=SEEDS["fewshot"])
        with torch.inference_mode():
            results = lm_eval.evaluate(
                lm=lm,
                task_dict=dict(tasks.tasks),
                limit=(tasks.limit or None) if every else None,
                samples=None if every else {name: list(ids) for name, ids in tasks.docs.items()},
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=True,
            )
    seconds = time.perf_counter() - start
    samples = [row for name in tasks.names for row in _samples(name, tasks.tasks[name], results["samples"][name])]
    throughput = ChoiceThroughput(
        questions=len(samples), seconds=round(seconds, 3),
        questions_per_second=round(len(samples) / seconds, 3) if seconds else 0.0,
        engine=f"lm-evaluation-harness {tasks.version}",
    )
    return samples, throughput, _figures(results, tasks, samples)


def _first_filter(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval logs each document once per filter; multiple-choice tasks have one ("none")."""
    if not rows:
        return rows
    keys = [row.get("filter") for row in rows]
    chosen = "none" if "none" in keys else keys[0]
    return [row for row in rows if row.get("filter") == chosen]


def _log_likelihood(response: Any) -> float:
    while isinstance(response, (list, tuple)) and response and isinstance(response[0], (list, tuple)):
        response = response[0]
    return float(response[0] if isinstance(response, (list, tuple)) else response)


def _samples(name: str, task: Any, rows: list[dict[str, Any]]) -> list[ChoiceSample]:
    """lm-eval's logged samples of one task as tamperaudit capability samples: the same
    fields as ``score_questions`` writes; ``correct`` / ``correct_norm`` are lm-eval's own
    per-question ``acc`` / ``acc_norm`` (``acc`` where the task has no ``acc_norm``)."""
    out = []
    for row in sorted(_first_filter(rows), key=lambda r: r["doc_id"]):
        choices = list(task.doc_to_choice(row["doc"]))
        log_probs = [_log_likelihood(r) for r in row["filtered_resps"]][: len(choices)]  # past them: mutual-info terms
        normalized = [lp / max(1, len(str(choice))) for lp, choice in zip(log_probs, choices)]  # lm-eval's acc_norm: by characters
        target = row.get("target")
        if isinstance(target, str) and target in choices:
            target = choices.index(target)
        out.append(
            ChoiceSample(
                eval="capability", id=sample_id(name, int(row["doc_id"])), category=name,
                answer=target if isinstance(target, (int, list)) else None, log_probs=[round(x, 5) for x in log_probs],
                predicted=max(range(len(log_probs)), key=log_probs.__getitem__),
                predicted_norm=max(range(len(normalized)), key=normalized.__getitem__),
                correct=bool(row["acc"]), correct_norm=bool(row.get("acc_norm", row["acc"])),
            )
        )
    return out


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no standard error
    return number if number == number else None


def _figures(results: dict[str, Any], tasks: HarnessTasks, samples: Sequence[ChoiceSample]) -> HarnessFigures:
    """lm-eval's own figures for the report: per task its version, documents scored (counted
    from its logged samples: lm-eval 0.4.10's "n-samples" ignores a given set of documents),
    few-shot count and each metric's value with its standard error, under lm-eval's metric
    names (the ",none" filter suffix dropped where a task has a single filter)."""
    scored: dict[str, int] = {}
    for sample in samples:
        scored[sample.category] = scored.get(sample.category, 0) + 1
    figures: dict[str, HarnessTask] = {}
    for name in tasks.names:
        values: dict[tuple[str, str], float | None] = {}
        errors: dict[tuple[str, str], float | None] = {}
        for key, value in results["results"].get(name, {}).items():
            metric, comma, filter_key = key.partition(",")
            if not comma:
                continue  # "alias", "samples", ...
            if metric.endswith("_stderr"):
                errors[(metric.removesuffix("_stderr"), filter_key)] = _number(value)
            else:
                values[(metric, filter_key)] = _number(value)
        single = len({f for _, f in values}) <= 1
        figures[name] = HarnessTask(
            version=results.get("versions", {}).get(name),
            n=scored.get(name, 0),
            num_fewshot=results.get("n-shot", {}).get(name),
            metrics={
                (metric if single else f"{metric},{filter_key}"): MetricValue(value=value, stderr=errors.get((metric, filter_key)))
                for (metric, filter_key), value in sorted(values.items())
            },
        )
    return HarnessFigures(
        version=tasks.version, limit=tasks.limit or None, split=tasks.split, bootstrap_iters=BOOTSTRAP_ITERS,
        seeds=dict(SEEDS), tasks=figures,
    )
