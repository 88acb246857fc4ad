"""The same completions, two judges: a run folder's recorded verdicts beside another judge's.

Every generated sample of every finished stage of RUN is judged again by --judge (the keyword
judge by default), and for each stage, eval and mode the shares of refused / complied / unclear
are printed for the verdicts the run recorded and for the other judge, with how often the two
agree. Nothing is written into the run folder. A measurement to read: it shows how much of an
audit's headline is the judge's.

    python benchmarks/rejudge.py RUN [--judge keyword] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from tamperaudit.evals.choose import make_judge
from tamperaudit.records import GenerationSample
from tamperaudit.runfolder import RunFolder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--judge", default="keyword")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run = RunFolder.open(args.run, writes=False)
    recorded_judge = run.manifest().inputs.judge.get("name")
    other = make_judge(args.judge)
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    seconds = 0.0
    judged = 0
    for stage, entry in sorted(run.manifest().stages.items()):
        if entry.state != "done" or not (args.run / stage / "samples.jsonl").is_file():
            continue
        samples = [s for s in run.samples(stage) if isinstance(s, GenerationSample)]
        if not samples:
            continue
        started = time.perf_counter()
        verdicts = other.judge_many([(s.prompt, s.completion) for s in samples])
        seconds += time.perf_counter() - started
        judged += len(samples)
        for sample, verdict in zip(samples, verdicts):
            groups[(stage, sample.eval, sample.mode)].append((sample.verdict, verdict.label))
    rows = []
    print(f"recorded judge: {recorded_judge}; other judge: {other.name} ({judged} completions in {seconds:.1f} s)")
    print("| stage | eval | mode | n | recorded refused / complied / unclear | other refused / complied / unclear | same verdict |")
    print("|---|---|---|---:|---|---|---:|")
    for (stage, name, mode), pairs in sorted(groups.items()):
        n = len(pairs)

        def shares(index: int) -> str:
            return " / ".join(f"{100 * sum(p[index] == v for p in pairs) / n:.0f}%" for v in ("refused", "complied", "unclear"))

        same = sum(a == b for a, b in pairs)
        print(f"| {stage} | {name} | {mode} | {n} | {shares(0)} | {shares(1)} | {100 * same / n:.0f}% |")
        rows.append({"stage": stage, "eval": name, "mode": mode, "n": n, "same": same,
                     "recorded": {v: sum(p[0] == v for p in pairs) for v in ("refused", "complied", "unclear")},
                     "other": {v: sum(p[1] == v for p in pairs) for v in ("refused", "complied", "unclear")}})
    if args.json:
        args.json.write_text(json.dumps({"recorded_judge": recorded_judge, "other_judge": other.describe(),
                                         "seconds": seconds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
