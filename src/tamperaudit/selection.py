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

from typing import Any, Sequence

import torch

from tamperaudit import progress
from tamperaudit.data import Conversation, Prompt


@torch.inference_mode()
def _embed(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Mean last-layer hidden state of each text as a chat user turn, L2-normalised."""
    from tamperaudit.generation import render_chat

    decoder = model.get_decoder()
    device = next(model.parameters()).device
    vectors = []
    with progress.bar(total=len(texts), desc="embedding for selection", unit="text") as bar:
        for begin in range(0, len(texts), batch_size):
            rows = [render_chat(tokenizer, [{"role": "user", "content": t}]) for t in texts[begin : begin + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
            weights = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)  # a spread model ends on its last GPU
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            vectors.append(torch.nn.functional.normalize(pooled.float(), dim=-1).to(device))
            bar.update(len(rows))
    return torch.cat(vectors)


def closest_to_harmful(
    model: Any, tokenizer: Any, pool: Sequence[Conversation], anchors: Sequence[Prompt], count: int
) -> list[tuple[str, float]]:
    """The ``count`` pool conversations most similar to the anchors, as (id, cosine similarity)."""
    user_turns = [next(m["content"] for m in c.messages if m["role"] == "user") for c in pool]
    centre = torch.nn.functional.normalize(_embed(model, tokenizer, [a.text for a in anchors]).mean(0), dim=-1)
    similarity = _embed(model, tokenizer, user_turns) @ centre
    order = sorted(range(len(pool)), key=lambda i: (-float(similarity[i]), pool[i].id))
    return [(pool[i].id, round(float(similarity[i]), 6)) for i in order[:count]]
