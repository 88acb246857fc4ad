"""Which learned judge: a linear head over frozen MiniLM features, or MiniLM fine-tuned end to end?

Both are scored by the same cross-validation, grouped by prompt (every reply to one request in
the same fold), on the rows the learned judge is fitted on (``tamperaudit judge-fit``'s sources:
the shipped uncut rows and the pool, read from --runs):

- keyword: the keyword judge alone (nothing fitted; the floor);
- linear: what ``judge-fit`` ships, one logistic regression per verdict over the frozen
  encoder's features and the keyword judge's verdict and features (blocks and L2 as given);
- fine-tuned: all-MiniLM-L6-v2 as a cross-encoder over "request [SEP] reply" (mean-pooled,
  a linear layer to the three verdicts), every weight trained with AdamW for --epochs epochs
  at --lr, on the fold's training rows.

Printed: each one's three-way agreement, refused recall and precision over the held-out folds,
with the seconds each took and this machine's float32 matmul GFLOPS. A measurement to read.

    python benchmarks/judge_heads.py --runs DIR [--folds 3] [--epochs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import matmul_peak_gflops

from tamperaudit.evals import learned_fit
from tamperaudit.evals.judge_fit import fold_of
from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.learned import encoder_folder
from tamperaudit.evals.verdicts import VERDICTS


def fine_tuned(train: list[learned_fit.Row], test: list[learned_fit.Row], epochs: int, lr: float, seed: int) -> list[str]:
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    folder = encoder_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder, use_safetensors=True)
    head = torch.nn.Linear(encoder.config.hidden_size, len(VERDICTS))
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    labels = torch.tensor([VERDICTS.index(r.label) for r in train])

    def forward(rows: list[learned_fit.Row]) -> torch.Tensor:
        batch = tokenizer([r.prompt for r in rows], [r.completion or " " for r in rows], padding=True, truncation=True,
                          max_length=192, return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return head((hidden * mask).sum(1) / mask.sum(1))

    generator = np.random.default_rng(seed)
    encoder.train()
    for _ in range(epochs):
        order = generator.permutation(len(train))
        for begin in range(0, len(order), 16):
            index = order[begin : begin + 16]
            loss = torch.nn.functional.cross_entropy(forward([train[i] for i in index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    encoder.eval()
    predicted = []
    with torch.inference_mode():
        for begin in range(0, len(test), 64):
            predicted += [VERDICTS[i] for i in forward(test[begin : begin + 64]).argmax(-1).tolist()]
    return predicted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="the judge recipes' run folders")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--l2", type=float, default=0.1, help="the linear head's regularization")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    peaks = [matmul_peak_gflops()]
    pool, missing = learned_fit.pool_rows(args.runs)
    rows = learned_fit.distinct(learned_fit.shipped_rows() + pool)
    y = np.array([r.label for r in rows], dtype=object)
    folds = np.array([fold_of(r.prompt, args.folds) for r in rows])
    print(f"{len(rows)} distinct rows ({dict(missing) or 'none'} pool rows missing); {args.folds} folds grouped by prompt")
    results = {}

    started = time.perf_counter()
    keyword = KeywordJudge()
    results["keyword"] = (learned_fit.figures(y, np.array([v.label for v in keyword.judge_many([(r.prompt, r.completion) for r in rows])])),
                          time.perf_counter() - started)

    started = time.perf_counter()
    x = learned_fit.all_features([(r.prompt, r.completion) for r in rows])
    print(f"features of every row (encoder and keyword judge): {time.perf_counter() - started:.0f} s")
    for blocks in learned_fit.BLOCK_SETS:
        started = time.perf_counter()
        columns = learned_fit.columns(blocks)
        name = "linear: " + "+".join(blocks)
        results[name] = (learned_fit.figures(y, learned_fit.held_out(x[:, columns], y, folds, args.l2)),
                         time.perf_counter() - started)

    started = time.perf_counter()
    predicted = np.empty(len(rows), dtype=object)
    for fold in range(args.folds):
        train = [r for r, f in zip(rows, folds) if f != fold]
        test_index = [i for i, f in enumerate(folds) if f == fold]
        predicted[test_index] = fine_tuned(train, [rows[i] for i in test_index], args.epochs, args.lr, seed=fold)
        print(f"  fine-tuned fold {fold + 1}/{args.folds} done, {time.perf_counter() - started:.0f} s", flush=True)
    results[f"fine-tuned MiniLM ({args.epochs} epochs, lr {args.lr})"] = (learned_fit.figures(y, predicted),
                                                                       time.perf_counter() - started)
    peaks.append(matmul_peak_gflops())
    print(f"float32 matmul {peaks[0]:.0f} / {peaks[1]:.0f} GFLOPS (before / after)")
    print("| judge | three-way agreement | refused recall | refused precision | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, (figures, seconds) in results.items():
        print(f"| {name} | {figures['agreement']:.3f} | {figures['refused_recall']:.3f} | {figures['refused_precision']:.3f} "
              f"| {seconds:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": len(rows), "folds": args.folds, "peak_gflops": peaks,
                                         "results": {k: {**f, "seconds": s} for k, (f, s) in results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
