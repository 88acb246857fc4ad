"""Fit the keyword judge's complied/unclear model on labelled rows, by cross-validation.

    python -m tamperaudit.evals.judge_fit LABELS.jsonl [LABELS.jsonl ...] --out judge_content_model.json

Only the rows the judge's rules leave to the content model take part (no refusal found,
not empty) and only those labelled ``complied`` or ``unclear``. Features are the judge's
own (``KeywordJudge.features``), standardized; the model is an L2-regularized logistic
regression fitted by Newton's method. The regularization strength is chosen by grouped
k-fold cross-validation (all stages of one prompt in the same fold, so a prompt seen in
training never scores its own held-out reply), and the agreement reported is that
cross-validated figure, never the training fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tamperaudit.evals.judge_check import read_labels
from tamperaudit.evals.judges import COMPLIED, UNCLEAR, ContentModel, KeywordJudge
from tamperaudit.fileio import atomic_write_text, sha256_file

FOLDS = 5
L2_GRID = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
VERSION = 1


def _undecided_judge() -> KeywordJudge:
    """The rules without a content model: every reply that reaches it reads 'unclear'."""
    blank = ContentModel(features=(), mean=(), scale=(), coef=(), intercept=0.0, threshold=2.0, sha256="", version=0)
    return KeywordJudge(content_model=blank)


def content_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, list[str]]:
    """The rows the content model decides, their feature matrix, labels (1 = complied) and names."""
    judge = _undecided_judge()
    kept, features = [], []
    for row in rows:
        if row["label"] not in (COMPLIED, UNCLEAR):
            continue
        if not judge.judge(row["prompt"], row["completion"]).reason.startswith("content model"):
            continue  # decided by a rule (a refusal, or empty)
        kept.append(row)
        features.append(judge.features(row["prompt"], row["completion"]))
    names = list(features[0]) if features else []
    matrix = np.array([[f[n] for n in names] for f in features], dtype=float)
    labels = np.array([r["label"] == COMPLIED for r in kept], dtype=float)
    return kept, matrix, labels, names


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Weights and intercept minimizing mean log-loss + l2/2 * |w|^2 (intercept not penalized)."""
    n, d = x.shape
    design = np.hstack([np.ones((n, 1)), x])
    weights = np.zeros(d + 1)
    penalty = np.eye(d + 1) * l2
    penalty[0, 0] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) / n + penalty @ weights
        hessian = (design.T * (p * (1 - p))) @ design / n + penalty + np.eye(d + 1) * 1e-9
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return weights[1:], float(weights[0])


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


def fold_of(prompt: str, folds: int = FOLDS) -> int:
    return int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16) % folds


def cross_validated(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float) -> np.ndarray:
    """Each row's prediction (1 = complied) from a model fitted without its fold."""
    predicted = np.zeros(len(y))
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        mean, scale = _standardize(x[train])
        coef, intercept = fit_logistic((x[train] - mean) / scale, y[train], l2)
        predicted[test] = (((x[test] - mean) / scale) @ coef + intercept) >= 0
    return predicted


def fit(paths: Sequence[Path], split: str = "") -> dict[str, Any]:
    rows = [row for path in paths for row in read_labels(path, split)]
    kept, x, y, names = content_rows(rows)
    folds = np.array([fold_of(r["prompt"]) for r in kept])
    scores = {l2: float((cross_validated(x, y, folds, l2) == y).mean()) for l2 in L2_GRID}
    best = max(scores, key=lambda l2: (scores[l2], l2))  # ties: the stronger regularization
    mean, scale = _standardize(x)
    coef, intercept = fit_logistic((x - mean) / scale, y, best)
    training = float(((((x - mean) / scale) @ coef + intercept >= 0) == y).mean())
    return {
        "version": VERSION,
        "about": ("complied vs unclear for replies in which the keyword judge's rules find no refusal: a logistic "
                  "regression over the named features (standardized by mean and scale). Fitted by "
                  "tamperaudit.evals.judge_fit; 'cross_validated' is the agreement on held-out folds."),
        "features": names,
        "mean": [round(float(v), 6) for v in mean],
        "scale": [round(float(v), 6) for v in scale],
        "coef": [round(float(v), 6) for v in coef],
        "intercept": round(intercept, 6),
        "threshold": 0.5,
        "l2": best,
        "fitted_on": {
            "rows": len(kept), "complied": int(y.sum()), "unclear": int(len(y) - y.sum()),
            "files": {path.name: sha256_file(path) for path in paths}, "split": split or "all",
        },
        "cross_validated": {"folds": FOLDS, "grouped_by": "prompt", "agreement": scores[best],
                            "by_l2": {str(k): round(v, 4) for k, v in scores.items()}},
        "training_agreement": training,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tamperaudit.evals.judge_fit", description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path, nargs="+", help="labelled JSONL files (prompt, completion, label)")
    parser.add_argument("--split", default="", help="only rows with this split")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model JSON")
    args = parser.parse_args(argv)
    model = fit(args.labels, args.split)
    atomic_write_text(args.out, json.dumps(model, indent=1) + "\n")
    cv = model["cross_validated"]
    print(f"{model['fitted_on']['rows']} rows ({model['fitted_on']['complied']} complied, {model['fitted_on']['unclear']} unclear); "
          f"{cv['folds']}-fold cross-validated agreement {100 * cv['agreement']:.1f}% at l2 {model['l2']} "
          f"(training {100 * model['training_agreement']:.1f}%)")
    for name, weight in sorted(zip(model["features"], model["coef"]), key=lambda p: -abs(p[1])):
        print(f"  {name:20s} {weight:+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
