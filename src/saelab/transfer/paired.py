"""Residual streams of two models on the same texts, at the positions their tokenizers align.

    >>> pairs = paired_activations(smollm2, "model.layers.10", gemma, "model.layers.9", docs)
    >>> pairs.x_a.shape, pairs.x_b.shape       # [N, 576], [N, 640]: row i is one text prefix
    >>> pairs.counts                           # tokens of each model, aligned, kept

Each document is tokenised by each model's own tokenizer (with its own BOS, cut to `max_tokens`
tokens), run through each model, and read at its hookpoint; the positions whose tokens end at
the same character offset (`saelab.transfer.align`) are paired. Left out of the pairs, as saelab
leaves them out of training: the first position of either model (an attention sink), special
tokens, and rows whose norm exceeds `norm_factor` x the median norm of that model's first batch
(SmolLM2's separators and Gemma's BOS carry norms hundreds of times the others'; see
`saelab.capture.exclude`). Only the text both models read is aligned: a document longer than
`max_tokens` tokens for one model is aligned up to where that model stopped reading.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.capture import Capture, resolve
from saelab.capture.exclude import NORM_FACTOR, Exclusion
from saelab.data import Document
from saelab.errors import ConfigError, DataError
from saelab.transfer.align import align_offsets

log = logging.getLogger(__name__)

MIN_ALIGNED = 64
"""Fewest aligned positions `paired_activations` accepts (an affine map of a d-wide stream needs
many more rows than that; fitting asks for more)."""


class Paired(NamedTuple):
    """Aligned residual-stream rows of two models on the same texts."""

    x_a: Tensor
    """Model A's activations at the aligned positions [N, d_a] (float32)."""
    x_b: Tensor
    """Model B's activations at the same text prefixes [N, d_b] (float32)."""
    doc: Tensor
    """Index of each row's document in the documents given [N] (for splits by document)."""
    ids_a: Tensor
    """Model A's token id at each row [N] (the token that ends the aligned prefix)."""
    ids_b: Tensor
    """Model B's token id at each row [N]."""
    counts: dict[str, int]
    """tokens_a, tokens_b (read by each model), aligned (pairs by offset), kept (pairs left
    after the exclusion rules: the rows here)."""


@torch.no_grad()
def paired_activations(lm_a: Any, hookpoint_a: str, lm_b: Any, hookpoint_b: str,
                       documents: Sequence[Document | str], *, max_tokens: int = 128,
                       batch_size: int = 8, norm_factor: float | None = NORM_FACTOR,
                       max_rows: int | None = None, progress: bool = False) -> Paired:
    """The aligned activations of `lm_a` at `hookpoint_a` and `lm_b` at `hookpoint_b`
    (`saelab.models.LoadedModel`s with tokenizers that give offset mappings) on `documents`,
    stopping once `max_rows` rows are kept. ConfigError when a model lacks its hookpoint or
    its tokenizer gives no offsets; DataError when fewer than MIN_ALIGNED positions align."""
    texts = [d.text if isinstance(d, Document) else str(d) for d in documents]
    sides = [_Side(lm_a, hookpoint_a, norm_factor, max_tokens),
             _Side(lm_b, hookpoint_b, norm_factor, max_tokens)]
    out: dict[str, list[Tensor]] = {k: [] for k in ("x_a", "x_b", "doc", "ids_a", "ids_b")}
    counts = {"tokens_a": 0, "tokens_b": 0, "aligned": 0, "kept": 0}
    for start in tqdm(range(0, len(texts), batch_size), desc="aligned activations",
                      unit="batch", disable=not progress):
        batch = list(range(start, min(start + batch_size, len(texts))))
        runs = [side.run([texts[i] for i in batch]) for side in sides]
        for b, i in enumerate(batch):
            (acts_a, ids_a, off_a, keep_a), (acts_b, ids_b, off_b, keep_b) = (r[b] for r in runs)
            counts["tokens_a"] += len(off_a)
            counts["tokens_b"] += len(off_b)
            pairs = align_offsets(off_a, off_b)
            counts["aligned"] += pairs.aligned
            pa, pb = torch.tensor(pairs.pos_a, dtype=torch.long), torch.tensor(pairs.pos_b,
                                                                               dtype=torch.long)
            kept = keep_a[pa] & keep_b[pb]
            pa, pb = pa[kept], pb[kept]
            out["x_a"].append(acts_a[pa])
            out["x_b"].append(acts_b[pb])
            out["ids_a"].append(ids_a[pa])
            out["ids_b"].append(ids_b[pb])
            out["doc"].append(torch.full((len(pa),), i, dtype=torch.long))
            counts["kept"] += len(pa)
        if max_rows is not None and counts["kept"] >= max_rows:
            break
    if counts["kept"] < MIN_ALIGNED:
        raise DataError(f"only {counts['kept']} positions of the two models align and survive "
                        f"the exclusion rules ({counts['aligned']} aligned by character offset "
                        f"of {counts['tokens_a']} and {counts['tokens_b']} tokens); at least "
                        f"{MIN_ALIGNED} are needed: give more or longer texts")
    rows = {k: torch.cat(v)[:max_rows] for k, v in out.items()}
    counts["kept"] = len(rows["doc"])
    log.info("aligned %d of %d / %d tokens; kept %d", counts["aligned"], counts["tokens_a"],
             counts["tokens_b"], counts["kept"])
    return Paired(rows["x_a"], rows["x_b"], rows["doc"], rows["ids_a"], rows["ids_b"], counts)


class _Side:
    """One model of the pair: its hookpoint, tokenizer and exclusion rule."""

    def __init__(self, lm: Any, hookpoint: str, norm_factor: float | None, max_tokens: int):
        if lm.tokenizer is None or not getattr(lm.tokenizer, "is_fast", False):
            raise ConfigError(f"model {lm.name!r} needs a fast tokenizer (one that gives "
                              f"character offsets) to align its tokens with another model's")
        hps = resolve(lm.model, [hookpoint])  # ConfigError naming similar modules if absent
        if len(hps) != 1:
            raise ConfigError(f"hookpoint {hookpoint!r} matches {len(hps)} modules of "
                              f"{lm.name!r}; name one")
        self.lm, self.key, self.max_tokens = lm, hps[0].key, max_tokens
        self.exclusion = Exclusion(special_ids=list(lm.tokenizer.all_special_ids or []),
                                   norm_factor=norm_factor)
        self.device = next(lm.model.parameters()).device

    def run(self, texts: list[str]) -> list[tuple[Tensor, Tensor, list, Tensor]]:
        """Per text: (activations [T, d], token ids [T], offsets, keep mask [T])."""
        enc = self.lm.tokenizer(texts, truncation=True, max_length=self.max_tokens,
                                return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        pad = self.lm.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        width = max(1, max(map(len, ids)))
        ids_BT = torch.full((len(ids), width), pad, dtype=torch.long)
        mask_BT = torch.zeros((len(ids), width), dtype=torch.long)
        for b, seq in enumerate(ids):  # right padding: a causal model's real tokens unchanged
            ids_BT[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask_BT[b, :len(seq)] = 1
        with Capture(self.lm.model, [self.key]) as cap:
            acts_BTD = cap.run(input_ids=ids_BT.to(self.device),
                               attention_mask=mask_BT.to(self.device))[self.key].float().cpu()
        if not torch.isfinite(acts_BTD).all():
            raise DataError(f"the activation at {self.key!r} of {self.lm.name!r} holds NaN or "
                            f"inf: check the model's weights and dtype")
        self.exclusion.calibrate(ids_BT, {self.key: acts_BTD})
        keep_BT = self.exclusion.keep_mask(ids_BT, {self.key: acts_BTD}) & mask_BT.bool()
        keep_BT[:, 0] = False  # the first position: an attention sink in both models
        return [(acts_BTD[b, :len(seq)], ids_BT[b, :len(seq)], offsets[b],
                 keep_BT[b, :len(seq)]) for b, seq in enumerate(ids)]
