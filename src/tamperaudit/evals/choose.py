"""``make_judge``: any judge from its ``eval.judge`` setting. It imports every kind of judge, and
no judge imports it, so the judges' modules never import each other back."""

from __future__ import annotations

from pathlib import Path

from tamperaudit.evals.judges import KeywordJudge
from tamperaudit.evals.verdicts import Judge


def make_judge(spec: str) -> Judge:
    """'learned' (the encoder and fitted head), 'keyword', or a judge TOML file describing a
    model or HTTP judge."""
    if spec == "keyword":
        return KeywordJudge()
    if spec == "learned":
        from tamperaudit.evals.learned import LearnedJudge

        return LearnedJudge()
    from tamperaudit.evals.model_judges import load_model_judge

    return load_model_judge(Path(spec).expanduser())
