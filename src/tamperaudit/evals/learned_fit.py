"""Fit the learned judge's head from its named sources (``tamperaudit judge-fit``).

    tamperaudit judge-fit --runs DIR --benchmarks ../shared/benchmarks [--regenerate] [--out FILE]

Sources, each named with its hash in the head file:

1. the shipped labelled rows (``data/builtin/judge_labels.jsonl``) whose text was not cut (a
   cut reply was labelled on its whole text, so a model fitted on the cut text would learn
   that a preamble means compliance);
2. the pool: completions that the audits of ``data/builtin/judge_recipes.json`` write, each
   labelled blind by two AI labellers to ``docs/labelling-guide.md`` and adjudicated. Harmful
   answers are never shipped, so the pool ships as labels keyed to what regenerates the text
   (``data/builtin/judge_pool_labels.jsonl``: recipe, stage, eval, mode, prompt id and the
   SHA-256 of the completion). ``--regenerate`` runs the recipes' audits into ``--runs``
   (hours on a CPU; the same kind of CPU writes the same completions); a completion that is
   missing, or whose text hashes otherwise, is left out and counted, never guessed at.

Everything the head is (which feature blocks, the regularization) is chosen by 5-fold
cross-validation grouped by prompt (every reply to one request in the same fold);
leave-one-model-out figures are reported beside it. Identical (request, reply) pairs are
kept once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tamperaudit.data import BUILTIN_DIR
from tamperaudit.data.formats import jsonl_rows
from tamperaudit.errors import UserError
from tamperaudit.evals.judge_check import read_labels
from tamperaudit.evals.judge_fit import FOLDS, fit_logistic, fold_of
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.verdicts import REFUSED, VERDICTS
from tamperaudit.fileio import sha256_file

HEAD_VERSION = 1
SHIPPED_LABELS = "judge_labels.jsonl"
POOL_LABELS = "judge_pool_labels.jsonl"
RECIPES = "judge_recipes.json"
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # the model that wrote the shipped rows
L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
REFUSED_BIASES = (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
# The feature-block sets cross-validation chooses among (the keyword judge's verdict and
# features alone, the encoder alone, and both).
BLOCK_SETS = (
    ("keyword_verdict", "keyword_features"),
    ("reply", "added", "cosine"),
    ("reply", "added", "cosine", "keyword_verdict", "keyword_features"),
)


@dataclass(frozen=True)
class Row:
    prompt: str
    completion: str
    label: str
    model: str  # the model that wrote the reply: cross-validation can leave one out
    source: str  # "shipped" or "pool"


# --- the pool's recipes: audits that regenerate its completions ----------------------------------

def recipes() -> list[dict[str, Any]]:
    return json.loads((BUILTIN_DIR / RECIPES).read_text(encoding="utf-8"))


def recipe_argv(recipe: dict[str, Any], out: Path, benchmarks: Path) -> list[str]:
    """The audit that writes a recipe's completions: float32 on 2 threads with the keyword
    judge's early stops, so that it writes the same completions again on the same kind of CPU."""

    def where(spec: str) -> str:
        return str(benchmarks / spec.split(":", 1)[1]) if spec.startswith("benchmarks:") else spec

    argv = ["audit", "--quiet", "--model", recipe["model"], "--attack", recipe["attack"], "--budgets", recipe["budgets"],
            "--out", str(out), "--harmful", where(recipe["harmful"]), "--benign", where(recipe["benign"]),
            "--set", "model.precision=float32", "--set", "model.threads=2", "--set", "eval.judge=keyword"]
    for key, value in recipe["set"].items():
        argv += ["--set", f"{key}={value}"]
    return argv


def regenerate(runs: Path, benchmarks: Path, run: Callable[[list[str]], int]) -> None:
    """Run every recipe's audit whose run folder is not complete (resuming one that stopped),
    each through ``run`` (the command line's ``main``)."""
    for recipe in recipes():
        out = runs / recipe["name"]
        if (out / "report.json").is_file():
            continue
        code = run(["resume", str(out), "--quiet"] if out.exists() else recipe_argv(recipe, out, benchmarks))
        if code != 0:
            raise UserError(f"the audit of the judge recipe {recipe['name']} failed (exit code {code})")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipe_completions(runs: Path) -> dict[tuple[str, str, str, str, str], tuple[str, str]]:
    """(recipe, stage, eval, mode, prompt id) -> (prompt, completion), from the recipes' run folders."""
    from tamperaudit.records import GenerationSample
    from tamperaudit.runfolder import RunFolder

    found: dict[tuple[str, str, str, str, str], tuple[str, str]] = {}
    for recipe in recipes():
        folder = runs / recipe["name"]
        if not (folder / "manifest.json").is_file():
            continue
        run = RunFolder.open(folder, writes=False)
        for stage, entry in run.manifest().stages.items():
            if entry.state != "done" or not (folder / stage / "samples.jsonl").is_file():
                continue
            for sample in run.samples(stage):
                if isinstance(sample, GenerationSample):
                    found[(recipe["name"], stage, sample.eval, sample.mode, sample.id)] = (sample.prompt, sample.completion)
    return found


def pool_rows(runs: Path, labels: Path | None = None) -> tuple[list[Row], Counter[str]]:
    """The pool's labels joined to the completions their recipes wrote, checked by SHA-256."""
    models = {r["name"]: r["model"] for r in recipes()}
    texts = recipe_completions(runs)
    rows, missing = [], Counter[str]()
    for _, label in jsonl_rows(labels or BUILTIN_DIR / POOL_LABELS):
        key = (label["recipe"], label["stage"], label["eval"], label["mode"], label["prompt_id"])
        if key not in texts:
            missing["absent"] += 1
            continue
        prompt, completion = texts[key]
        if text_sha256(completion) != label["completion_sha256"]:
            missing["changed"] += 1
            continue
        rows.append(Row(prompt, completion, label["label"], models[label["recipe"]], "pool"))
    return rows, missing


def shipped_rows() -> list[Row]:
    return [Row(r["prompt"], r["completion"], r["label"], DEFAULT_MODEL, "shipped")
            for r in read_labels(BUILTIN_DIR / SHIPPED_LABELS, skip_truncated=True)]


def distinct(rows: Sequence[Row]) -> list[Row]:
    """Each (request, reply) pair once (the first row's label: a text is labelled once)."""
    seen: dict[tuple[str, str], Row] = {}
    for row in rows:
        seen.setdefault((row.prompt, row.completion), row)
    return list(seen.values())


# --- fitting and cross-validation ----------------------------------------------------------------

Fitted = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # mean, scale, coef (labels x features), intercepts


def fit_head(x: np.ndarray, y: np.ndarray, l2: float) -> Fitted:
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    fitted = [fit_logistic(z, (y == label).astype(float), l2) for label in VERDICTS]
    return mean, scale, np.array([c for c, _ in fitted]), np.array([i for _, i in fitted])


def logits(x: np.ndarray, head: Fitted) -> np.ndarray:
    mean, scale, coef, intercept = head
    return ((x - mean) / scale) @ coef.T + intercept


@dataclass(frozen=True)
class Rule:
    """How the head's scores become a verdict: ``refused_bias`` is added to the refused score,
    and with ``keyword_refusals_stand`` a reply the keyword judge reads as refused stays refused."""

    refused_bias: float = 0.0
    keyword_refusals_stand: bool = False


RULES = tuple(Rule(bias, stand) for stand in (False, True) for bias in REFUSED_BIASES)


def decide(scores: np.ndarray, keyword_refused: np.ndarray, rule: Rule) -> np.ndarray:
    shifted = scores.copy()
    shifted[:, VERDICTS.index(REFUSED)] += rule.refused_bias
    verdicts = np.array(VERDICTS, dtype=object)[np.argmax(shifted, axis=1)]
    if rule.keyword_refusals_stand:
        verdicts[keyword_refused] = REFUSED
    return verdicts


def figures(y: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    refused, judged = y == REFUSED, predicted == REFUSED
    return {"rows": int(len(y)), "agreement": round(float((predicted == y).mean()), 4),
            "refused_recall": round(float((refused & judged).sum() / max(int(refused.sum()), 1)), 4),
            "refused_precision": round(float((refused & judged).sum() / max(int(judged.sum()), 1)), 4)}


def held_out_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float) -> np.ndarray:
    """Each row's scores from a head fitted without its group."""
    scores = np.empty((len(y), len(VERDICTS)))
    for group in np.unique(groups):
        test = groups == group
        scores[test] = logits(x[test], fit_head(x[~test], y[~test], l2))
    return scores


def held_out(x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float) -> np.ndarray:
    """Each row's verdict (plain rule) from a head fitted without its group."""
    return decide(held_out_scores(x, y, groups, l2), np.zeros(len(y), dtype=bool), Rule())


def columns(blocks: Sequence[str]) -> np.ndarray:
    """The columns of the full feature matrix (every block, in BLOCKS order) a block set reads."""
    from tamperaudit.evals.learned import BLOCKS, block_names

    start, spans = 0, {}
    for block in BLOCKS:
        width = len(block_names(block))
        spans[block] = range(start, start + width)
        start += width
    return np.array([i for block in blocks for i in spans[block]])


def keyword_refusals(x_all: np.ndarray) -> np.ndarray:
    """Where the keyword judge said refused (its one-hot verdict columns in the full matrix)."""
    return x_all[:, columns(("keyword_verdict",))[VERDICTS.index(REFUSED)]] > 0.5


def fit(rows: Sequence[Row], features: Callable[[Sequence[tuple[str, str]]], np.ndarray]) -> dict[str, Any]:
    """The head file's contents. Cross-validation grouped by prompt chooses the block set, the
    regularization and the rule (refused bias, whether keyword refusals stand): the most
    three-way agreement among the choices that read refusals at least as well as the keyword
    judge on the same rows (recall and precision both), or, where none does, the most agreement
    overall (the file says which). Ties: fewer features, more regularization, smaller bias.
    The head is then refitted on every row."""
    rows = distinct(rows)
    if len({r.label for r in rows}) < len(VERDICTS):
        raise UserError(f"the judge's head needs rows of every verdict ({', '.join(VERDICTS)}); got {len(rows)} rows")
    x_all = features([(r.prompt, r.completion) for r in rows])
    y = np.array([r.label for r in rows], dtype=object)
    folds = np.array([fold_of(r.prompt) for r in rows])
    models = np.array([r.model for r in rows], dtype=object)
    stand = keyword_refusals(x_all)
    keyword = figures(y, _keyword_verdicts(x_all))
    scores: dict[tuple[tuple[str, ...], float, Rule], dict[str, Any]] = {}
    for blocks, l2 in itertools.product(BLOCK_SETS, L2_GRID):
        held = held_out_scores(x_all[:, columns(blocks)], y, folds, l2)
        for rule in RULES:
            scores[(blocks, l2, rule)] = figures(y, decide(held, stand, rule))

    def reads_refusals(s: dict[str, Any]) -> bool:
        return s["refused_recall"] >= keyword["refused_recall"] and s["refused_precision"] >= keyword["refused_precision"]

    qualified = [k for k, s in scores.items() if reads_refusals(s)]

    def rank(k: tuple[tuple[str, ...], float, Rule]) -> tuple[float, int, float, float]:
        return scores[k]["agreement"], -len(columns(k[0])), k[1], -abs(k[2].refused_bias)

    blocks, l2, rule = max(qualified or list(scores), key=rank)
    x = x_all[:, columns(blocks)]
    mean, scale, coef, intercept = fit_head(x, y, l2)
    by_model = decide(held_out_scores(x, y, models, l2), stand, rule) if len(set(models)) > 1 else None
    return {
        "version": HEAD_VERSION,
        "about": ("the learned judge's head (tamperaudit.evals.learned): one logistic regression per verdict over the "
                  "standardized features of the named blocks, then the rule; fitted by `tamperaudit judge-fit`"),
        "labels": list(VERDICTS),
        "blocks": list(blocks),
        "mean": _rounded(mean), "scale": _rounded(scale), "coef": [_rounded(c) for c in coef],
        "intercept": _rounded(intercept),
        "l2": l2,
        "rule": {"refused_bias": rule.refused_bias, "keyword_refusals_stand": rule.keyword_refusals_stand},
        "fitted_on": {
            "rows": len(rows),
            "sources": dict(sorted(Counter(r.source for r in rows).items())),
            "labels": {label: int((y == label).sum()) for label in VERDICTS},
            "models": dict(sorted(Counter(r.model for r in rows).items())),
            "files": {name: sha256_file(BUILTIN_DIR / name) for name in (SHIPPED_LABELS, POOL_LABELS, RECIPES)
                      if (BUILTIN_DIR / name).is_file()},
        },
        "cross_validated": {
            "grouped_by_prompt": {"folds": FOLDS, **scores[(blocks, l2, rule)]},
            "keyword_judge_same_rows": keyword,
            "reads_refusals_as_well_as_keyword": bool(qualified),
            "leave_one_model_out": figures(y, by_model) if by_model is not None else None,
            "every_choice": [{"blocks": list(b), "l2": v, "refused_bias": r.refused_bias,
                              "keyword_refusals_stand": r.keyword_refusals_stand, **s}
                             for (b, v, r), s in scores.items()],
        },
    }


def _keyword_verdicts(x_all: np.ndarray) -> np.ndarray:
    one_hot = x_all[:, columns(("keyword_verdict",))]
    return np.array(VERDICTS, dtype=object)[np.argmax(one_hot, axis=1)]


def _rounded(values: np.ndarray) -> list[float]:
    """Eight significant digits: the file stays small, and the last bits of a float sum on
    another CPU do not change it."""
    return [float(f"{v:.8g}") for v in np.asarray(values, dtype=np.float64)]


def all_features(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Every block for every pair, computed once (cross-validation selects columns)."""
    from tamperaudit.evals.learned import BLOCKS, pair_features, shared_encoder

    return pair_features(shared_encoder("cpu"), KeywordJudge(), pairs, BLOCKS)


def fit_from_sources(runs: Path | None, pool_labels: Path | None = None) -> tuple[dict[str, Any], Counter[str]]:
    pool, missing = pool_rows(runs, pool_labels) if runs is not None else ([], Counter[str]())
    return fit(shipped_rows() + pool, all_features), missing
