"""ARC-Easy at baseline: lm-evaluation-harness vs tamperaudit's own multiple-choice scorer.

Both score the same N questions (the first N of the ARC-Easy test file in
../shared/benchmarks/arc_easy, llm-foundry's ``query``/``choices``/``gold`` JSONL) on
the same in-memory model, loaded as the pipeline loads it (``models.load``, precision
``auto`` unless --precision says otherwise):

- lm-eval through ``tamperaudit.evals.lm_harness`` (``HFLM(pretrained=model)``) on a
  local task written here: ``dataset_path: json`` over that file,
  ``doc_to_text: "{{query.rstrip()}}\\nAnswer:"``, ``doc_to_choice: "{{choices}}"``,
  ``doc_to_target: gold``, lm-eval's default target delimiter " ". That is the text
  tamperaudit's ARC reader builds (``formats._question_row``: the query, whose rows
  already begin "Question: ", right-stripped, then "\\nAnswer:") and the continuation
  its scorer scores (" " + choice), so both see the same question text and choices;
  lm-eval's ``acc_norm`` divides by the choice's length in characters, as
  ``accuracy_norm`` does.
- tamperaudit's ``score_questions`` on ``load_capability(file, limit=N)``: a
  one-category file, so its even-across-categories limit is the first N rows, the
  documents lm-eval's ``limit`` takes.

Printed: each side's accuracy and normalised accuracy (lm-eval's with its standard
error, tamperaudit's with its 95% Wilson interval), the per-question agreement of
``correct`` and of ``correct_norm``, the largest per-choice log-likelihood gap, each
side's wall time, and this machine's float32 matmul GFLOPS before and after. Not a
timed test: a measurement to read.

    python benchmarks/lm_eval_vs_builtin.py [--limit 200] [--precision auto] [--json out.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from common import arguments, load, matmul_peak_gflops, peak_line

from tamperaudit.data import load_capability
from tamperaudit.backends.hf import HfModel
from tamperaudit.evals.capability import aggregate_capability, score_questions
from tamperaudit.evals.lm_harness import resolve_tasks, score_tasks

ARC_EASY = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "arc_easy" / "arc_easy.jsonl"

TASK_YAML = """task: arc_easy_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{query.rstrip()}}}}\\nAnswer:"
doc_to_target: gold
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def main() -> int:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="questions scored by both (the first N of the file)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"), help="as model.precision")
    parser.add_argument("--data", type=Path, default=ARC_EASY, help="ARC-Easy JSONL (query/choices/gold)")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"{args.data}: not found (the ARC-Easy file of ../shared/benchmarks)", file=sys.stderr)
        return 2
    peaks = [matmul_peak_gflops()]
    loaded = load(args.model, args.precision)
    model, tokenizer = loaded.model, loaded.tokenizer
    with tempfile.TemporaryDirectory() as scratch:
        tasks_dir = Path(scratch) / "tasks"
        tasks_dir.mkdir()
        (tasks_dir / "arc_easy_local.yaml").write_text(TASK_YAML.format(data=args.data, cache=Path(scratch) / "datasets"))
        tasks = resolve_tasks("lm-eval:arc_easy_local", args.limit, str(tasks_dir))
        start = time.perf_counter()
        harnessed, _, harness = score_tasks(HfModel(model, tokenizer), tasks)
        harness_seconds = time.perf_counter() - start
    questions = load_capability(str(args.data), args.limit)
    start = time.perf_counter()
    own, _ = score_questions(HfModel(model, tokenizer), questions.items)
    own_seconds = time.perf_counter() - start
    peaks.append(matmul_peak_gflops())

    n = len(own)
    assert len(harnessed) == n, (len(harnessed), n)
    figures = harness.tasks["arc_easy_local"].metrics
    ours = aggregate_capability(own)
    agree = sum(a.correct == b.correct for a, b in zip(harnessed, own))
    agree_norm = sum(a.correct_norm == b.correct_norm for a, b in zip(harnessed, own))
    gap = max(abs(x - y) for a, b in zip(harnessed, own) for x, y in zip(a.log_probs, b.log_probs))

    def wilson(share) -> str:
        return f"{share.rate:.4f} [{share.low:.4f}, {share.high:.4f}]"

    print(f"\n== ARC-Easy, first {n} test questions, {args.model} ({loaded.precision.name}: {loaded.precision.reason}), baseline")
    print(peak_line(peaks))
    print(f"  lm-evaluation-harness {harness.version}: acc {figures['acc'].value:.4f} ± {figures['acc'].stderr:.4f}, "
          f"acc_norm {figures['acc_norm'].value:.4f} ± {figures['acc_norm'].stderr:.4f} (stderr); wall {harness_seconds:.1f} s")
    print(f"  tamperaudit score_questions: accuracy {wilson(ours.accuracy)}, accuracy_norm {wilson(ours.accuracy_norm)} "
          f"(95% Wilson); wall {own_seconds:.1f} s")
    print(f"  per-question agreement: correct {agree}/{n} ({100 * agree / n:.1f}%), correct_norm {agree_norm}/{n} ({100 * agree_norm / n:.1f}%)")
    print(f"  largest per-choice log-likelihood gap: {gap:.4f} nats")
    print(f"  wall time ratio lm-eval / tamperaudit: {harness_seconds / own_seconds:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "questions": n, "model": args.model, "precision": loaded.precision.name, "peak_gflops": peaks,
            "lm_eval": harness.to_json(), "lm_eval_seconds": harness_seconds, "tamperaudit": ours.to_json(),
            "tamperaudit_seconds": own_seconds,
            "agreement_correct": agree, "agreement_correct_norm": agree_norm, "max_log_likelihood_gap": gap,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
