"""The audit end to end: wall time and peak memory, and how both grow.

Runs whole audits in child processes (so each peak memory is its own): the
default audit and ``--quick`` (with --full), then small audits at two sizes of
the prompt sets and at two attack budgets (without the control arm, which would
double both sides of each ratio; ``--quick`` halves those prompt sets). Doubling
the prompts or the budget should at most double the time: the script prints
each ratio. Before the first audit the
model's weight files are read once, so that no audit alone pays for reading
them from disk. This machine's fp32 matmul peak, measured before and after the
audits, is printed beside the times (a drop means other load shared the CPU).

With ``--against COMMIT`` it instead compares this checkout with an earlier
commit on the same machine in one run: the commit's ``src`` is unpacked into a
temporary folder (``git archive``) and run by the same interpreter, so both
sides use the same installed libraries; the default audit and ``--quick`` run
on both sides, in the order old, new, new, old, at one pinned precision. It
prints both wall times, their ratio and both peak memories, and, stage by
stage, how many completions, verdicts (same eval, mode and prompt) and
multiple-choice predictions agree, the removal scores under both readings, and
whether the targets of issue 16 hold (at most 40% of the old wall time, at
least 98% of verdicts and 99% of predictions identical at every stage, the
same scores, no higher peak memory). Verdicts are compared twice: as each side
recorded them, and as this checkout's judge gives them on both sides'
completions; the target applies to the second, since a revision of the judge
between the commits changes verdicts on identical text and is not speed work.

    python benchmarks/bench_audit.py [--full] [--quick] [--json out.json]
    python benchmarks/bench_audit.py --against f1dc738 [--audits default,quick] [--json out.json]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[1] / "src"
SMALL = {"eval.harmful_limit": 22, "eval.benign_limit": 9, "eval.capability_limit": 24, "eval.kl_limit": 8}


def child(source: str, argv: list[str]) -> None:
    """Run one audit in this process, with tamperaudit imported from ``source``, and print
    its wall time and peak memory as JSON."""
    sys.path.insert(0, source)
    import tamperaudit

    if not Path(tamperaudit.__file__).resolve().is_relative_to(Path(source).resolve()):
        raise SystemExit(f"tamperaudit was imported from {tamperaudit.__file__}, not from {source}")
    from tamperaudit.cli import main

    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(json.dumps({"code": code, "seconds": seconds, "peak_gb": peak}))


def run(argv: list[str], source: Path = SOURCE, out: Path | None = None) -> dict:
    """One audit in a child process; its run folder is ``out`` if given, else a temporary one."""
    if out is None:
        with tempfile.TemporaryDirectory() as folder:
            return run(argv, source, Path(folder) / "run")
    command = [sys.executable, __file__, "--child", str(source), "audit", "--quiet", "--out", str(out), *argv]
    # the child's own source goes first on its path; PYTHONPATH could put this checkout before it
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    if result.get("code") != 0:  # the child exits 0 whatever the audit's own exit code was
        raise SystemExit(f"audit {' '.join(argv)} from {source} failed:\n{done.stderr[-4000:]}")
    return result


def read_weights(spec: str) -> None:
    """Read the model's files once, so every audit finds them in the page cache."""
    from tamperaudit import models, progress

    progress.set_quiet(True)
    for path in sorted(models.resolve_source(spec).folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def settings(values: dict) -> list[str]:
    return [part for key, value in values.items() for part in ("--set", f"{key}={value}")]


def stage_samples(root: Path) -> dict[str, list[dict]]:
    """Every stage's samples in a run folder, by the stage folder's path (``baseline``,
    ``budget-000005``, ``control/budget-000005``, ...)."""
    from tamperaudit.fileio import read_jsonl

    return {str(path.parent.relative_to(root)): read_jsonl(path) for path in sorted(root.rglob("samples.jsonl"))}


def agreement(old: list[dict], new: list[dict], field: str) -> tuple[int, int]:
    """How many of the old stage's samples carrying ``field`` have the same value in the new
    stage's sample for the same eval, mode and prompt id; a sample missing there disagrees."""
    key = lambda sample: (sample.get("eval"), sample.get("mode"), sample.get("id"))  # noqa: E731
    ours = {key(sample): sample.get(field) for sample in new if field in sample}
    theirs = [(key(sample), sample[field]) for sample in old if field in sample]
    return sum(ours.get(name, object()) == value for name, value in theirs), len(theirs)


def scores(report: dict) -> dict[str, object]:
    """Each mode's removal score under both readings: the budget at which refusal fell below
    the relative and the absolute threshold (None: not reached)."""
    found = {}
    for reading in ("score", "score_unclear_as_refusal"):
        for mode, score in (report.get(reading) or {}).items():
            for threshold in ("relative", "absolute"):
                part = score.get(threshold) or {}
                found[f"{reading}/{mode}/{threshold}"] = part.get("budget") if part.get("reached") else None
    return found


def rejudged(samples: list[dict], judge: Any) -> list[dict]:
    """The judged samples with each verdict given again by ``judge`` (this checkout's), so that
    the two sides' generations are compared under one judge (the judge's own revisions
    between the commits are not speed work)."""
    judged = [sample for sample in samples if "verdict" in sample]
    verdicts = judge.judge_many([(sample["prompt"], sample["completion"]) for sample in judged])
    return [dict(sample, verdict=verdict.label) for sample, verdict in zip(judged, verdicts)]


def compare(old_root: Path, new_root: Path) -> dict:
    """Stage by stage: completions, verdicts as each side recorded them, verdicts by this
    checkout's judge on both sides' completions, and multiple-choice predictions."""
    from tamperaudit.evals.judges import KeywordJudge
    from tamperaudit.fileio import read_json

    judge = KeywordJudge()
    old, new = stage_samples(old_root), stage_samples(new_root)
    stages = {}
    for stage in old:
        theirs, ours = old[stage], new.get(stage, [])
        counts = {
            "completion": agreement(theirs, ours, "completion"),
            "verdict as recorded": agreement(theirs, ours, "verdict"),
            "verdict": agreement(rejudged(theirs, judge), rejudged(ours, judge), "verdict"),
            "predicted": agreement(theirs, ours, "predicted"),
            "predicted_norm": agreement(theirs, ours, "predicted_norm"),
        }
        stages[stage] = {field: {"same": same, "of": total} for field, (same, total) in counts.items() if total}
    both = {side: scores(read_json(root / "report.json")) for side, root in (("old", old_root), ("new", new_root))}
    return {"stages": stages, "missing_stages": sorted(set(new) - set(old)), "scores": both}


AUDITS = {"default": [], "quick": ["--quick"]}


def against(commit: str, model: str, pinned: list[str], which: list[str]) -> dict:
    """Old and new audits from one run, their times and memory, and how their results agree."""
    audits = {f"{name} audit": ["--model", model, *AUDITS[name], *pinned] for name in which}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "old"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(SOURCE.parent), "archive", commit, "src"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        order = []
        for index, name in enumerate(audits):
            sides = ("old", "new") if index % 2 == 0 else ("new", "old")
            order += [(name, side) for side in sides]

        def out(name: str, side: str) -> Path:
            return Path(folder) / f"{side}-{name.split()[0]}"

        for name, side in order:
            print(f"running {name} on the {side} side ({commit if side == 'old' else 'this checkout'})", file=sys.stderr, flush=True)
            source = tree / "src" if side == "old" else SOURCE
            results.setdefault(name, {})[side] = run(audits[name], source=source, out=out(name, side))
        for name in audits:
            results[name]["agreement"] = compare(out(name, "old"), out(name, "new"))
    return results


NEEDS = {"verdict": 0.98, "predicted": 0.99, "predicted_norm": 0.99}
LABELS = {
    "completion": "completions",
    "verdict as recorded": "verdicts as each side's judge recorded them",
    "verdict": "verdicts (this checkout's judge on both sides' completions)",
    "predicted": "multiple-choice predictions",
    "predicted_norm": "length-normalised multiple-choice predictions",
}


def _budget(value: object) -> object:
    return "not reached" if value is None else value


def print_against(commit: str, results: dict) -> bool:
    """The comparison's table and whether every target holds."""
    held = True

    def target(ok: bool, text: str) -> None:
        nonlocal held
        held = held and ok
        print(f"    [{'ok' if ok else 'MISSED'}] {text}")

    for name, result in results.items():
        old, new = result["old"], result["new"]
        ratio = new["seconds"] / old["seconds"]
        print(f"\n  {name}: {commit} {old['seconds']:.1f} s, peak {old['peak_gb']:.2f} GB; "
              f"this checkout {new['seconds']:.1f} s, peak {new['peak_gb']:.2f} GB; wall-time ratio {ratio:.3f}")
        target(ratio <= 0.40, f"wall time {100 * ratio:.1f}% of {commit}'s (target at most 40%)")
        # compared as printed, to 10 MB: the peak moves by kilobytes between runs of the same code
        target(round(new["peak_gb"], 2) <= round(old["peak_gb"], 2),
               f"peak memory {new['peak_gb']:.2f} GB vs {old['peak_gb']:.2f} GB (target no higher, to 0.01 GB)")
        agreement = result["agreement"]
        for stage, fields in agreement["stages"].items():
            for field, count in fields.items():
                share = count["same"] / count["of"]
                shown = f"{stage}: {count['same']}/{count['of']} {LABELS[field]} identical ({100 * share:.1f}%"
                if field in NEEDS:
                    target(share >= NEEDS[field], f"{shown}, target {100 * NEEDS[field]:.0f}%)")
                else:
                    print(f"    [info] {shown})")
        if agreement["missing_stages"]:
            print(f"    stages only this checkout has: {', '.join(agreement['missing_stages'])}")
        old_scores, new_scores = agreement["scores"]["old"], agreement["scores"]["new"]
        for key in sorted(set(old_scores) | set(new_scores)):
            before, after = old_scores.get(key, "absent"), new_scores.get(key, "absent")
            target(before == after, f"score {key}: {_budget(before)} vs {_budget(after)} (target the same)")
    return held


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import arguments, matmul_peak_gflops, peak_line

    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also time the default audit and --quick (tens of minutes)")
    parser.add_argument("--against", metavar="COMMIT", help="compare the default audit and --quick with this commit's, in one run")
    parser.add_argument(
        "--audits", default="default,quick", type=lambda text: text.split(","),
        help="with --against: which audits to compare (default: default,quick)",
    )
    parser.add_argument(
        "--audit-set", action="append", default=[], metavar="KEY=VALUE",
        help="with --against: a setting for every audit on both sides (after the pinned precision, so it can override it)",
    )
    args = parser.parse_args()
    if unknown := set(args.audits) - set(AUDITS):
        parser.error(f"--audits: unknown {', '.join(sorted(unknown))} (choose from {', '.join(AUDITS)})")
    read_weights(args.model)
    # One precision for every audit: 'auto' measures at each start, and a child that chose
    # differently would not be comparable with the others.
    import torch

    from tamperaudit.models import choose_precision

    precision = choose_precision("auto", torch.device("cpu"))
    print(f"precision for every audit: {precision.name} ({precision.reason})")
    pinned = ["--set", f"model.precision={precision.name}"]
    if args.against:
        peaks = {dtype: [matmul_peak_gflops(getattr(torch, dtype))] for dtype in ("float32", "bfloat16")}
        extra = [part for value in args.audit_set for part in ("--set", value)]
        results = against(args.against, args.model, [*pinned, *extra], args.audits)
        for dtype in peaks:
            peaks[dtype].append(matmul_peak_gflops(getattr(torch, dtype)))
        print(f"\n== this checkout against {args.against} (each audit in its own process, same machine, same run)")
        for dtype, values in peaks.items():
            print(f"  matmul peak ({dtype}, before / after the audits): {' / '.join(f'{v:.1f}' for v in values)} GFLOPS")
        held = print_against(args.against, results)
        print(f"\n  every target {'holds' if held else 'does NOT hold'}")
        if args.json:
            args.json.write_text(json.dumps({"against": args.against, "precision": precision.name, "peak_gflops": peaks, **results}, indent=2, default=str))
        return
    peaks = [matmul_peak_gflops()]
    results = {}
    if args.full:
        results["default audit"] = run(["--model", args.model, *pinned])
        results["--quick audit"] = run(["--model", args.model, "--quick", *pinned])
    single = {key: max(1, value // 2) for key, value in SMALL.items()} if args.quick else SMALL
    double = {key: 2 * value for key, value in single.items()}
    small = ["--model", args.model, "--no-control", *pinned]
    results["prompts x1 (budgets 0,2)"] = run([*small, "--budgets", "0,2", *settings(single)])
    results["prompts x2 (budgets 0,2)"] = run([*small, "--budgets", "0,2", *settings(double)])
    results["budget 4 (prompts x1)"] = run([*small, "--budgets", "0,4", *settings(single)])
    results["budget 8 (prompts x1)"] = run([*small, "--budgets", "0,8", *settings(single)])
    peaks.append(matmul_peak_gflops())
    print("\n== audit end to end (each in its own process)")
    print(peak_line(peaks))
    for name, result in results.items():
        print(f"  {name:<28} {result['seconds']:8.1f} s   peak {result['peak_gb']:.2f} GB")
    prompt_ratio = results["prompts x2 (budgets 0,2)"]["seconds"] / results["prompts x1 (budgets 0,2)"]["seconds"]
    budget_ratio = results["budget 8 (prompts x1)"]["seconds"] / results["budget 4 (prompts x1)"]["seconds"]
    print(f"  time ratio when the prompts double: {prompt_ratio:.2f} (linear growth would be at most 2)")
    print(f"  time ratio when the largest budget doubles: {budget_ratio:.2f} (linear growth would be at most 2)")
    if args.json:
        args.json.write_text(json.dumps({**results, "peak_gflops": peaks, "prompt_ratio": prompt_ratio, "budget_ratio": budget_ratio}, indent=2))


if __name__ == "__main__":
    main()
