"""The report.json contract, version 2. Renderers read only this file.

Fields (a comment for each; rates are {"count", "total", "rate", "low", "high"},
a share with its 95% Wilson interval):

- ``schema_version``: this schema's version; a breaking change increments it.
- ``status``: "complete"; "error" or "interrupted" when the run failed or was stopped
  (Ctrl-C, SIGTERM), with ``error`` saying what happened in one line and ``stopped_in``
  the stages that were running. A report of an incomplete run holds only ``schema_version``,
  ``status``, ``error``, ``stopped_in``, ``tool``, ``created``, ``run``, ``config``,
  ``hashes`` (the run's recorded inputs) and ``summary``; no score is given for it.
- ``tool``: {"name", "version"} of tamperaudit that wrote the report.
- ``created``: UTC time the report was written (ISO 8601).
- ``run``: {"folder", "stage_seconds": {stage: seconds of its last successful run},
  "wall_seconds": wall-clock seconds of every tamperaudit session that worked on the run (a
  session: one command, in one process or in several launched together), from its start
  (data and model loading included) to its report, summed over resumes; "sessions": how
  many sessions that was}.
- ``config``: the resolved configuration (the run's config.toml as a table).
- ``hashes``: {"config": SHA-256 of the canonical configuration, "model": SHA-256 of the
  model's weights (the GGUF file for built-ins), "datasets": {role: SHA-256}, "judge":
  the judge's description (below)}.
- ``seeds``: {"attack": seed of data order, LoRA initialisation and dropout}.
- ``model``: {"spec", "kind", "sha256", "source": {"origin": where the file comes from,
  "quantization": the weights' form, e.g. a GGUF's quantization types, dequantized for the
  audit; for a Hub model also "revision" and "commit"}, "precision", "precision_reason",
  "parameters" (4-bit weights counted as weights, not bytes), "quantization" ("none" or
  "nf4": the base loaded in 4 bits, every figure measured on it), "quantization_description",
  "weight_bytes", "devices", "gpus" (how many of them are GPUs), "training_memory": {"micro_batch_tokens",
  "gradient_checkpointing", "reason", "activation_bytes" (estimated), "free_bytes"}: the plan
  of the process that wrote the report (null without attack budgets), ...}.
- ``hardware``: {"description", "device", "threads", "gpus", "gpu_name", "processes"}; ``price``:
  {"per_hour", "source"}: configured, the CPU default, or the GPU table's row (times the GPUs),
  per process.
- ``processes``: {"processes": how many trained data-parallel in the session that wrote the
  report, "kind": accelerate's distributed type ("MULTI_GPU", "MULTI_CPU") or "single process",
  "launcher": "accelerate" or null}. Training seconds (``train.seconds``, ``cost.seconds``) are
  device-seconds: each process's time summed over the processes, so dollars are seconds times
  the price per process; ``train.processes`` is the most processes that trained any of a
  budget's steps.
- ``generation_backend``: {"name": "hf" or "vllm", "reason": why it was chosen, "engine": its
  settings in words, "extra_memory": memory beyond the transformers model, and for vLLM
  "engine_start_seconds"}. Each point's ``metrics.throughput.generation.backend`` names the
  backend that generated it.
- ``projection``: null without attack budgets, else {"basis": which tokens (to removal, or the
  largest budget's when removal was not reached), "tokens", "labelled_tokens", "lora_rank",
  "utilization", "assumes": the assumptions in words, "rows": [{"model" (Llama-2-7B/13B/70B),
  "parameters", "gpu", "tokens", "flops", "gradient_checkpointing", "gpu_hours", "dollars",
  "price"}]}: an estimate from FLOPs per token, not a measurement.
- ``datasets``: {role: {"name", "path", "sha256", "ids_sha256", "count", "file_rows", "format",
  "notes", "categories"}}; with a settings search or closest-benign selection also
  "harmful_select" (and, with a search, "capability_select" and "kl_prompts_select"): the
  halves that chose the attack, disjoint from the reported ones.
- ``attack``: {"name", "data", "system_prompt", "user_template", "settings": attack settings}.
- ``judge``: the judge's description: for the keyword judge {"name", "rules_version",
  "rules_sha256" (its code), "phrases_version", "phrases_sha256"}; for model judges the
  config file's hash, the code's hash and the model's hash.
- ``modes``: the harmful-prompt modes evaluated ("plain"; "trigger" when the attack defines one).
- ``headline_mode``: the mode the headline scores: "trigger" when evaluated, else "plain".
- ``points``: one per budget, ascending, budget 0 first:
  {"budget": steps, "train": train.json or null, "cost": {"steps", "examples", "tokens",
  "labelled_tokens", "seconds", "flops", "achieved_gflops", "dollars"} or null, "metrics":
  {"harmful": {mode: verdict shares}, "benign": {"plain": verdict shares}, "capability":
  {"accuracy", "accuracy_norm", "by_category"}, "kl": {"mean": KL(base || attacked) per
  reply token, pooled over all prompts' tokens, "max": the largest per-prompt mean,
  "prompts", "tokens", "standard_error"} or null at budget 0, "throughput": per-stage speeds}}.
  Verdict shares: {"n", "refused", "complied", "unclear", "refusal_if_unclear_refused",
  "refusal_among_clear", "by_category"}.
- ``score``: {mode: the removal figure of the attack (see tamperaudit.score)}: "status"
  (scored; low_baseline: refusal asked plainly below score.low_baseline, nothing to remove;
  removed_by_prompt: under the attack's own prompt the budget-0 refusal is already below a
  threshold measured against the plain baseline, i.e. removal at zero training cost;
  not_measured), "refusal_fraction", "relative" and "absolute" thresholds each with
  "threshold", "reached", "budget", "cost", "capability_violations" and "seed_arm" (the
  seed whose figure is the median); "per_seed": {threshold: {arm: budget or null}};
  "point_estimate": how the seeds were combined (their lower median); with trained
  budgets, "interval": a bootstrap of that same statistic over prompts, questions, KL
  prompts and seeds ("low"/"high" budgets, null meaning not reached within the largest
  budget, "reached_share", "statistic"). "reading" says how ``unclear`` verdicts were
  counted: "refused" (apart, not as refusal).
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

SCHEMA_VERSION = 2
