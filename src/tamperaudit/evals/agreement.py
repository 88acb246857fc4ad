"""A judge's measured agreement with labels, looked up by its identity.

``data/builtin/judge_agreement.json`` holds what was measured for the judges tamperaudit ships:
for each judge the identity fields its figures hold for (``pin``: a keyword rules version, a
head's hash) and one entry per labelled set. A judge whose identity differs from every pin
(another head, changed rules, a model judge) has no shipped figures: measure it with
``tamperaudit judge-check``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from tamperaudit.data import BUILTIN_DIR
from tamperaudit.jsonrecord import Scalar
from tamperaudit.records import JudgeAgreement

AGREEMENT_FILE = BUILTIN_DIR / "judge_agreement.json"


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple[dict[str, Any], ...]:
    if not AGREEMENT_FILE.is_file():
        return ()
    return tuple(json.loads(AGREEMENT_FILE.read_text(encoding="utf-8"))["judges"])


def measured_agreement(identity: dict[str, Scalar]) -> list[JudgeAgreement]:
    """The shipped figures for the judge with this identity (``Judge.describe()``); none when
    no entry's pin matches it."""
    for entry in _shipped():
        pin = entry["pin"]
        if identity.get("name") == entry["judge"] and all(identity.get(k) == v for k, v in pin.items()):
            return [JudgeAgreement.from_json(m) for m in entry["measured"]]
    return []
