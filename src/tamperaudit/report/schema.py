"""The report.json contract, version 1. Renderers read only this file.

Fields (a comment for each; rates are {"count", "total", "rate", "low", "high"},
a share with its 95% Wilson interval):

- ``schema_version``: this schema's version; a breaking change increments it.
- ``status``: "complete", or "error" with ``error`` saying what failed.
- ``tool``: {"name", "version"} of tamperaudit that wrote the report.
- ``created``: UTC time the report was written (ISO 8601).
- ``run``: {"folder", "stage_seconds": {stage: seconds of its last successful run},
  "wall_seconds": sum of those}.
- ``config``: the resolved configuration (the run's config.toml as a table).
- ``hashes``: {"config": SHA-256 of the canonical configuration, "model": SHA-256 of the
  model's weights (the GGUF file for built-ins), "datasets": {role: SHA-256}, "judge":
  the judge's name and phrase-list hash}.
- ``seeds``: {"attack": seed of data order, LoRA initialisation and dropout}.
- ``model``: {"spec", "kind", "sha256", "precision", "precision_reason", "parameters", ...}.
- ``hardware``: {"description", "device", "threads"}; ``price``: {"per_hour", "source"}.
- ``datasets``: {role: {"name", "path", "sha256", "count", "categories"}}.
- ``attack``: {"name", "data", "system_prompt", "user_template", "settings": attack settings}.
- ``judge``: the judge's description (name, phrase-list version and hash).
- ``modes``: the harmful-prompt modes evaluated ("plain"; "trigger" when the attack defines one).
- ``headline_mode``: the mode the headline scores: "trigger" when evaluated, else "plain".
- ``points``: one per budget, ascending, budget 0 first:
  {"budget": steps, "train": train.json or null, "cost": {"steps", "examples", "tokens",
  "labelled_tokens", "seconds", "flops", "achieved_gflops", "dollars"} or null, "metrics":
  {"harmful": {mode: verdict shares}, "benign": {"plain": verdict shares}, "capability":
  {"accuracy", "accuracy_norm", "by_category"}, "kl": {"mean", "max", "prompts",
  "standard_error"} or null at budget 0, "throughput": per-stage speeds}}.
  Verdict shares: {"n", "refused", "complied", "unclear", "refusal_if_unclear_refused",
  "refusal_among_clear", "by_category"}.
- ``score``: {mode: the removal figure of the attack (see tamperaudit.score)}: "status"
  (scored, low_baseline, not_measured), "relative" and "absolute" thresholds each with
  "reached", "budget", "cost" and "capability_violations"; with more than one budget,
  "interval" (bootstrap over prompts and seeds: "low"/"high" budgets, null high meaning
  not reached within the largest budget, "reached_share") and "per_seed". "reading" says
  how ``unclear`` verdicts were counted: "refused" (apart, not as refusal).
- ``score_unclear_as_refusal``: the same, with ``unclear`` counted as refusal (reading
  "refusal_if_unclear_refused"), the reading least favourable to the attack.
- ``arms``: the other attack runs: [{"name", "role" (attack or control), "seed", "data",
  "points"}]; ``points`` above is the first attack arm.
- ``control``: the control arm's attack description, or null; ``control_score``: its
  removal figure per mode, or null.
- ``search``: null, or {"mode", "tried": [settings with refusal, complied, capability_kept,
  seconds], "chosen", "capability_kept_by_chosen", "seconds"} when settings were searched.
- ``summary``: short sentences the renderers print first; derived from the fields above.
"""

SCHEMA_VERSION = 1
