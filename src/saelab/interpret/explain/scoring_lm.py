"""Log-likelihoods under a local causal LM, for the scorers that read a model's surprise
(surprisal, intervention) rather than its answers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prefixes: Sequence[str], continuations: Sequence[str],
                          batch_size: int = 8) -> list[float]:
    """Mean log-probability per token of each continuation after its prefix (nats; pairs
    are scored together, right-padded)."""
    out: list[float] = []
    device = next(model.parameters()).device
    for start in range(0, len(prefixes), batch_size):
        pairs = list(zip(prefixes[start:start + batch_size],
                         continuations[start:start + batch_size]))
        seqs, spans = [], []
        for prefix, cont in pairs:
            p = tokenizer(prefix, add_special_tokens=False).input_ids
            c = tokenizer(cont, add_special_tokens=False).input_ids or [tokenizer.eos_token_id]
            seqs.append(p + c)
            spans.append((len(p), len(p) + len(c)))
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logp_BTV = F.log_softmax(model(input_ids=ids.to(device),
                                       attention_mask=mask.to(device)).logits.float(), dim=-1)
        for i, (a, b) in enumerate(spans):
            # token t is predicted at position t - 1
            target = ids[i, a:b].to(device)
            out.append(float(logp_BTV[i, a - 1:b - 1].gather(1, target[:, None]).mean()))
    return out
