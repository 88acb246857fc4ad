"""Command line: ``tamperaudit audit | eval | resume | judge-check | judge-fit | label | data | config | models``.

``main(argv) -> int``. Errors a user can cause end in one line on stderr and exit
code 2; an interrupted run says how to resume it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from tamperaudit import __version__, progress
from tamperaudit.config import Settings, parse_assignment, resolve, to_toml
from tamperaudit.errors import Terminated, UserError, WriteError, is_out_of_memory, one_line

DEFAULT_JUDGE = Settings().eval.judge  # judge-check's judge when none is named: the audit's

EXIT_USER_ERROR = 2
EXIT_GATE_FAILED = 3  # --fail-if-removed-within: refusals removed within the gate's steps
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _budgets(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"budgets must be whole numbers of steps separated by commas, got {text!r}") from None


def _add_settings_flags(parser: argparse.ArgumentParser, attack: bool) -> None:
    parser.add_argument("--model", help="built-in model name, Hugging Face folder, .gguf file or Hub ID org/name (default: qwen2.5-coder-0.5b-instruct)")
    parser.add_argument("--revision", help="Hub branch, tag or commit of a Hub ID model (default: main)")
    parser.add_argument("--config", type=Path, help="TOML file of settings (see `tamperaudit config`)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any setting, e.g. --set attack.learning_rate=1e-4 (repeatable)")
    parser.add_argument("--harmful", help="harmful prompts instead of the built-in set: a file (AdvBench, HarmBench, StrongREJECT, SORRY-Bench, generic CSV/JSONL) or a fetched benchmark's name")
    parser.add_argument("--benign", help="benign look-risky prompts instead of the built-in set: a file (XSTest, generic CSV/JSONL) or a fetched benchmark's name")
    parser.add_argument("--capability", help="multiple-choice questions instead of the built-in set: a file or folder (MMLU, ARC, PIQA, WinoGrande, BoolQ, HellaSwag, TruthfulQA), a fetched benchmark's name, or lm-eval:TASK[,TASK...] for lm-evaluation-harness tasks")
    parser.add_argument("--out", type=Path, help="run folder to create (default: runs/<model>-<time>)")
    parser.add_argument("--attack", help="attack: identity-shift (default), benign, closest-benign, or a file of your own (chat JSONL, Alpaca, Qi et al. format)")
    if attack:
        parser.add_argument("--budgets", type=_budgets, help="optimizer steps to measure at, e.g. 0,5,10,20")
        parser.add_argument("--seed", type=int, help="seed of the attack (data order, LoRA init, dropout)")
        parser.add_argument("--learning-rate", type=float, help="attack learning rate")
        parser.add_argument("--keep-adapters", action="store_true", default=None, help="keep each budget's LoRA adapter after measuring it")
        parser.add_argument(
            "--quick", action="store_true",
            help="a smaller, faster audit (fewer prompts, budgets 0,5, no control arm); --set and other flags still override it",
        )
        parser.add_argument("--seeds", type=int, help="attack runs with different seeds; the score's interval covers them")
        parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=None, help="the control arm on benign data (on by default)")
        parser.add_argument(
            "--search", nargs="?", const="", default=None, metavar="METHOD",
            help="search attack settings first, by 'grid' or 'tpe' (Optuna's TPE sampler); alone: by search.method "
                 "(grid unless set; see [search] in `tamperaudit config`)",
        )
        parser.add_argument("--trials", type=int, help="trials of a --search tpe (default: the grid's size)")
        _add_gate_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def _add_gate_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-if-removed-within", type=int, metavar="STEPS",
        help="release gate: exit 3 if refusal falls below the relative threshold within STEPS steps in any mode, "
        "counting unclear as refusal (also when the baseline refuses too little); STEPS must be one of the budgets",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line like every other error (exit 2), not a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"tamperaudit: error: {self.prog.removeprefix('tamperaudit').strip() or 'tamperaudit'}: {message} "
              f"(see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tamperaudit",
        description="Measure how cheaply LoRA fine-tuning removes a chat model's refusals, and what it costs its capability.",
    )
    parser.add_argument("--version", action="version", version=f"tamperaudit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    audit = commands.add_parser("audit", help="baseline eval, attack at several budgets, eval at each, report")
    _add_settings_flags(audit, attack=True)
    evaluate = commands.add_parser("eval", help="scorecard of one model (optionally with a LoRA adapter), no attack")
    _add_settings_flags(evaluate, attack=False)
    evaluate.add_argument("--adapter", type=Path, help="PEFT adapter folder (safetensors) to evaluate on top of the model")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON (the run folder's metrics.json)")
    resume = commands.add_parser("resume", help="finish an interrupted audit")
    resume.add_argument("run", type=Path, help="the run folder")
    _add_gate_flag(resume)
    resume.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    show = commands.add_parser("config", help="print every setting with its help, resolved from defaults, file, env and flags")
    show.add_argument("--config", type=Path, help="TOML file of settings")
    show.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    commands.add_parser("models", help="list the built-in models and whether they are installed")
    check = commands.add_parser("judge-check", help="agreement of a judge with labelled completions (your own labels, or the shipped AI-labelled set)")
    check.add_argument("labels", type=Path, nargs="+", help='JSONL with "prompt", "completion", "label" '
                       '(refused/complied/unclear), a CSV with such columns (see --label-map), or "builtin" for the shipped set')
    check.add_argument("--judge", default=DEFAULT_JUDGE, help=f"'learned', 'keyword' or a judge TOML file (default: {DEFAULT_JUDGE})")
    check.add_argument("--prompt-column", default="prompt", help="CSV files: the column holding the request")
    check.add_argument("--completion-column", default="completion", help="CSV files: the column holding the reply")
    check.add_argument("--label-column", default="label", help="CSV files: the column holding the label")
    check.add_argument("--label-map", default="", metavar="THEIRS=VERDICT,...",
                       help="CSV files: how their labels map onto refused/complied/unclear, e.g. "
                       "2_full_refusal=refused,3_partial_refusal=refused,1_full_compliance=complied")
    check.add_argument("--by", default="", metavar="COLUMN",
                       help="also report each group of rows with the same value of COLUMN ('file': each labels file)")
    check.add_argument("--split", default="", help="only rows whose 'split' field has this value")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument(
        "--skip-truncated", action="store_true", help="leave out rows marked truncated (completions cut before labelling files were shipped)"
    )
    refit = commands.add_parser("judge-fit", help="refit the learned judge's head from its named sources (shipped labels, the recipes' pool)")
    refit.add_argument("--runs", type=Path, help="the folder of the judge recipes' run folders (without it: the shipped labels only)")
    refit.add_argument("--benchmarks", type=Path, help="with --regenerate: the folder of the public benchmarks the recipes name")
    refit.add_argument("--regenerate", action="store_true", help="run the recipes' audits missing from --runs first (hours on a CPU)")
    refit.add_argument("--out", type=Path, default=Path("judge_head.json"), help="where to write the head (default: ./judge_head.json)")
    label = commands.add_parser("label", help="label a run's completions by hand, blind to the judge's verdicts")
    label.add_argument("run", type=Path, help="a run folder")
    label.add_argument("--out", type=Path, required=True, help="labels JSONL to append to (resumes where it stopped)")
    label.add_argument("--eval", action="append", choices=("harmful", "benign", "contrast"), help="which prompts (default: all)")
    label.add_argument("--sample", type=int, default=0, help="label a random sample of N completions")
    label.add_argument("--seed", type=int, default=0, help="seed of the sample's order")
    compare = commands.add_parser("compare", help="several runs side by side (models, defenses, seeds)")
    compare.add_argument("runs", type=Path, nargs="+", help="run folders with a report.json")
    compare.add_argument("--force", action="store_true", help="compare even when probe sets or judges differ")
    compare.add_argument("--json", action="store_true", help="print the table as JSON")
    compare.add_argument("--out", type=Path, help="also write compare.md, compare.html and the shared-axes plot into this folder")
    data = commands.add_parser("data", help="list the built-in sets and known benchmarks; fetch a benchmark")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_commands.add_parser("list", help="built-in sets (rows, categories, hashes) and known benchmarks (the default)")
    fetch = data_commands.add_parser("fetch", help="download named benchmarks into the cache and check their SHA-256")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    return parser


FLAG_TO_SETTING = {
    "model": ("model", "name"),
    "revision": ("model", "revision"),
    "attack": ("attack", "data"),
    "budgets": ("attack", "budgets"),
    "seed": ("attack", "seed"),
    "learning_rate": ("attack", "learning_rate"),
    "keep_adapters": ("attack", "keep_adapters"),
    "seeds": ("attack", "seeds"),
    "control": ("attack", "control"),
    "trials": ("search", "trials"),
    "harmful": ("eval", "harmful"),
    "benign": ("eval", "benign"),
    "capability": ("eval", "capability"),
}


# What --quick changes: a third of the prompts, budgets 0 and 5, no control arm; wider intervals
# (the README's Speed section gives measured times).
QUICK = {
    "eval": {"harmful_limit": 33, "benign_limit": 18, "capability_limit": 40, "kl_limit": 12},
    "attack": {"budgets": [0, 5], "control": False},
}


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if getattr(args, "quick", False):
        overrides = {section: dict(values) for section, values in QUICK.items()}
    for assignment in getattr(args, "set", []):
        section, key, value = parse_assignment(assignment)
        overrides.setdefault(section, {})[key] = value
    for flag, (section, key) in FLAG_TO_SETTING.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    method = getattr(args, "search", None)  # --search METHOD; --search alone ("") keeps search.method
    if method is not None:
        overrides.setdefault("search", {}).update({"enabled": True, **({"method": method} if method else {})})
    return resolve(getattr(args, "config", None), os.environ, overrides)


def _default_out(settings: Settings, kind: str) -> Path:
    model = Path(settings.model.name).name.removesuffix(".gguf")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{kind}-{stamp}"


def _print_report(root: Path) -> None:
    from tamperaudit import distributed
    from tamperaudit.report.schema import read_report

    if not distributed.current().is_main:  # one summary, from the process that wrote it
        return
    for line in read_report(root / "report.json").summary:
        print(f"- {line}")
    print(f"report: {root / 'report.md'} (also report.html, report.json)")


def cmd_audit(args: argparse.Namespace) -> int:
    from tamperaudit import distributed
    from tamperaudit.pipeline import start_audit

    settings = settings_from(args)
    _check_gate(args.fail_if_removed_within, settings.attack.budgets)
    # named now so an interruption can cite it; the main process's name, when several run
    args.out = distributed.current().agree(args.out or _default_out(settings, "audit"))
    root = start_audit(settings, args.out)
    _print_report(root)
    return _gate(root, args.fail_if_removed_within)


def cmd_resume(args: argparse.Namespace) -> int:
    from tamperaudit.config import from_dict, read_toml
    from tamperaudit.pipeline import resume_audit
    from tamperaudit.runfolder import CONFIG

    if args.fail_if_removed_within is not None and (args.run / CONFIG).is_file():
        settings = from_dict(read_toml(args.run / CONFIG), str(args.run / CONFIG))
        _check_gate(args.fail_if_removed_within, settings.attack.budgets)
    root = resume_audit(args.run)
    _print_report(root)
    return _gate(root, args.fail_if_removed_within)


def _check_gate(steps: int | None, budgets: Sequence[int]) -> None:
    """A gate is measured, never assumed: its steps must be a budget the audit reaches."""
    if steps is None:
        return
    if steps not in budgets:
        raise UserError(
            f"--fail-if-removed-within {steps} is not one of the budgets ({','.join(map(str, budgets))}), so the "
            f"gate would not be measured at its own steps; add {steps} to --budgets"
        )


def _gate(root: Path, steps: int | None) -> int:
    from tamperaudit import distributed
    from tamperaudit.records import Report
    from tamperaudit.report.schema import read_report
    from tamperaudit.score import release_gate

    if steps is None:
        return 0
    report = read_report(root / "report.json")
    assert isinstance(report, Report), "a run that returned completed"
    result = release_gate(report, steps)
    if distributed.current().is_main:
        print(result.line)
    return EXIT_GATE_FAILED if result.failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tamperaudit.pipeline import run_eval
    from tamperaudit.report.render import scorecard_lines

    settings = settings_from(args)
    root, metrics = run_eval(settings, args.out or _default_out(settings, "eval"), args.adapter)
    if args.json:
        import json

        print(json.dumps(metrics.to_json(), indent=2))
        return 0
    for line in scorecard_lines(metrics):
        print(f"- {line}")
    print(f"samples and metrics: {root}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(to_toml(settings_from(args)), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from tamperaudit.models import BUILTIN_MODELS, builtin_part_paths

    for model in BUILTIN_MODELS.values():
        try:
            builtin_part_paths(model)
            state = "installed"
        except UserError:
            state = f"not installed: {model.install}"
        print(f"{model.name}: {model.description}; {model.license}; {state}")
    from tamperaudit.models import hub_cache

    print(f"Also: any Hugging Face Hub ID (org/name, cached in {hub_cache()}), model folder or .gguf file.")
    return 0


BUILTIN_SETS = {
    "harmful": ("harmful.jsonl", "load_harmful"),
    "benign": ("benign_risky.jsonl", "load_benign"),
    "capability": ("capability_mc.jsonl", "load_capability"),
    "kl_prompts": ("kl_prompts.jsonl", "load_kl_prompts"),
}


def cmd_data(args: argparse.Namespace) -> int:
    from tamperaudit import data
    from tamperaudit.data.registry import BENCHMARKS, cached_path, fetch

    if args.data_command == "fetch":
        for name in args.names:
            print(f"{name}: {fetch(name)} (SHA-256 verified)")
        return 0
    print("Built-in sets (src/tamperaudit/data/builtin; each has a data card beside it):")
    sets = [(role, getattr(data, loader)()) for role, (_, loader) in BUILTIN_SETS.items()]
    sets += [(f"attack {name}", data.load_attack(name).data) for name in data.BUILTIN_ATTACKS]
    for role, dataset in sets:
        categories = dataset.describe().categories
        spread = ", ".join(f"{c} {n}" for c, n in categories.items()) if len(categories) > 1 else ""
        print(f"  {role}: {len(dataset)} rows, sha256 {dataset.sha256[:16]}, {Path(dataset.path).name}")
        if spread:
            print(f"    {spread}")
    print("Benchmarks by name (fetched on request with `tamperaudit data fetch NAME`, never silently):")
    for benchmark in BENCHMARKS.values():
        try:
            state = f"cached at {cached_path(benchmark.name)}"
        except UserError:
            state = "not fetched"
        print(f"  {benchmark.name} (--{benchmark.role}): {benchmark.license}; {state}")
    return 0


def cmd_judge_check(args: argparse.Namespace) -> int:
    import json

    from tamperaudit.data import BUILTIN_DIR
    from tamperaudit.evals.judge_check import LabelColumns, check, format_check, read_labels
    from tamperaudit.evals.choose import make_judge

    columns = LabelColumns(args.prompt_column, args.completion_column, args.label_column,
                           LabelColumns.parse_mapping(args.label_map))
    # "builtin": the shipped set, labelled by AI agents (see its data card)
    paths = [BUILTIN_DIR / "judge_labels.jsonl" if str(p) == "builtin" else p for p in args.labels]
    rows = []
    for path in paths:
        rows += [{"file": path.name, **row} for row in read_labels(path, args.split, args.skip_truncated, columns)]
    result = check(make_judge(args.judge), rows, args.by)
    source = ", ".join(str(p) for p in paths)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_check(result, source))
    return 0


def cmd_judge_fit(args: argparse.Namespace) -> int:
    import json

    from tamperaudit.evals import learned_fit
    from tamperaudit.fileio import atomic_write_text

    if args.regenerate:
        if args.runs is None or args.benchmarks is None:
            raise UserError("--regenerate needs --runs DIR (where the recipes' audits go) and --benchmarks DIR")
        learned_fit.regenerate(args.runs, args.benchmarks, main)
    head, missing = learned_fit.fit_from_sources(args.runs)
    atomic_write_text(args.out, json.dumps(head, indent=1) + "\n")
    fitted, cv = head["fitted_on"], head["cross_validated"]
    print(f"{fitted['rows']} distinct rows {fitted['sources']}, labels {fitted['labels']}, models {fitted['models']}")
    if missing:
        print(f"pool rows left out: {dict(missing)} (absent from --runs, or regenerated with other text)")
    print(f"chosen: blocks {', '.join(head['blocks'])}; l2 {head['l2']}; rule {head['rule']}")
    print(f"cross-validated, grouped by prompt: {cv['grouped_by_prompt']}")
    print(f"the keyword judge on the same rows: {cv['keyword_judge_same_rows']}")
    if not cv["reads_refusals_as_well_as_keyword"]:
        print("warning: no choice read refusals as well as the keyword judge (recall and precision); "
              "the head is the one with the most agreement", file=sys.stderr)
    if cv["leave_one_model_out"]:
        print(f"leave one model out: {cv['leave_one_model_out']}")
    print(f"head: {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from tamperaudit.report.compare import compare, render

    table, problems = compare(args.runs, args.force, args.out)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(json.dumps(table, indent=2) if args.json else render(table))
    if args.out is not None and not args.json:
        print(f"page: {args.out / 'compare.html'}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from tamperaudit.evals.judge_check import label_candidates, label_session

    rows = label_candidates(args.run, args.eval or ("harmful", "benign", "contrast"))
    added = label_session(rows, args.out, input, sys.stdout, args.sample, args.seed)
    print(f"\n{added} labels added to {args.out}")
    return 0


COMMANDS = {
    "compare": cmd_compare,
    "judge-check": cmd_judge_check,
    "judge-fit": cmd_judge_fit,
    "label": cmd_label,
    "audit": cmd_audit,
    "eval": cmd_eval,
    "resume": cmd_resume,
    "config": cmd_config,
    "models": cmd_models,
    "data": cmd_data,
}


def interrupt_hint(args: argparse.Namespace) -> str:
    """What to do after an interruption, for the command that was interrupted."""
    if args.command in ("audit", "resume"):
        run = getattr(args, "out", None) or getattr(args, "run", None)
        resumable = run is not None and (Path(run) / "manifest.json").is_file()
        return f"; finish it with `tamperaudit resume {run}`" if resumable else ""
    if args.command == "eval":
        return f"; the eval in {args.out} is incomplete: run `tamperaudit eval` again with another --out"
    if args.command == "label":
        return f"; the labels given so far are saved in {args.out}: run the same command again to go on"
    return ""


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


# What may run under `accelerate launch` with several processes (see distributed.py).
DISTRIBUTED_COMMANDS = ("audit", "resume")


def _join_processes(command: str) -> None:
    """Under `accelerate launch` with several processes: join them, and quiet all but the main one."""
    from tamperaudit import distributed

    if distributed.launched_processes() <= 1:
        return
    if command not in DISTRIBUTED_COMMANDS:
        raise UserError(
            f"`tamperaudit {command}` runs in one process; only {' and '.join(DISTRIBUTED_COMMANDS)} train "
            "data-parallel under accelerate launch"
        )
    if not distributed.current().is_main:
        progress.set_quiet(True)


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error (already printed in one line)
        return stop.code if isinstance(stop.code, int) else EXIT_USER_ERROR
    progress.set_quiet(getattr(args, "quiet", False))
    # PEFT imports bitsandbytes whenever it is installed, and on CPUs with AVX-512 bf16 it
    # warns on every run about an optional kernel package; the reference kernel is used.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # PEFT asks transformers 5 for a renamed attribute on every adapter; not ours to fix, and
    # an extra two lines on every run's error output
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)  # stop through the same safe path as Ctrl-C
    try:
        _join_processes(args.command)
        return COMMANDS[args.command](args)
    except UserError as error:
        after = interrupt_hint(args) if isinstance(error, WriteError) else ""  # once space is freed
        print(f"tamperaudit: error: {one_line(error)}{after}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as error:
        print(f"tamperaudit: {one_line(error)}{interrupt_hint(args)}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(error, Terminated) else EXIT_INTERRUPTED
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        print(f"tamperaudit: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_point() -> None:
    sys.exit(main())
