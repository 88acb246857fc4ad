"""Benign examples that sit near harmful requests in the model's own representation space.

He, Xia and Henderson (2024, "What's in your 'safe' data?") found that benign
fine-tuning examples chosen for their similarity to harmful examples erode safety
far more than random benign ones. Their anchors are harmful request/answer pairs;
tamperaudit ships no harmful answers, so its anchors are harmful *requests* only:
each benign example's user turn and each anchor request are embedded as the mean
of the model's last hidden layer over their tokens, and the benign examples whose
embedding is most similar (cosine) to the anchors' mean are kept.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tamperaudit.backends.hf import HfModel
from tamperaudit.data import Conversation, Prompt


def closest_to_harmful(
    model: HfModel, pool: Sequence[Conversation], anchors: Sequence[Prompt], count: int
) -> list[tuple[str, float]]:
    """The ``count`` pool conversations most similar to the anchors, as (id, cosine similarity),
    by the model as given (the pipeline passes the unattacked one)."""
    desc = "embedding for selection"
    user_turns = [next(m["content"] for m in c.messages if m["role"] == "user") for c in pool]
    centre = torch.nn.functional.normalize(model.embed([a.text for a in anchors], desc=desc).mean(0), dim=-1)
    similarity = model.embed(user_turns, desc=desc) @ centre
    order = sorted(range(len(pool)), key=lambda i: (-float(similarity[i]), pool[i].id))
    return [(pool[i].id, round(float(similarity[i]), 6)) for i in order[:count]]
