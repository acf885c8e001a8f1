"""Turn documents into SAE embeddings: run the model, encode each token's activation at the
dictionary's hookpoint, pool the codes over the document's tokens.

    >>> emb = embed_documents(sae, lm, corpus.documents, hookpoint="model.layers.15")
    >>> emb.matrix().shape                    # (n_documents, n_latents), scipy CSR

Jiang et al. 2025 ("Interpretable Embeddings with Sparse Autoencoders: A Data Analysis
Toolkit"; `DatasetRow` in interp_embed/dataset_analysis.py) max-pool the SAE's activations over
a document's tokens; a latent is present in a document when its max is above 0. saelab offers
mean pooling too, and leaves out of the pool the positions the dictionary was trained without:
the first token and those its recorded exclusion rule drops (special tokens, rows of massive
norm; see `saelab.capture.exclude`). Their activations are hundreds of times the others' and
would light up latents that mean nothing about the text. A dictionary that records no rule gets
the default one (special tokens, norm above 5 x the median of the first batch).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from saelab.analyse.embeddings import Embeddings
from saelab.capture import Capture, resolve
from saelab.capture.exclude import Exclusion
from saelab.data import Document
from saelab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Pooling = Literal["max", "mean"]
MAX_TOKENS = 128
"""Default of every `max_tokens`: a document is cut to its first 128 tokens."""
BATCH_SIZE = 8
"""Default of every `batch_size`: documents per model forward."""


def fingerprint(dictionary: torch.nn.Module) -> str:
    """A sha256 of the dictionary's architecture and weights (hex): embeddings made with one
    dictionary are reused only for the same one."""
    digest = hashlib.sha256(str(getattr(dictionary, "architecture", "")).encode())
    for name, tensor in sorted(dictionary.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def exclusion_for(dictionary: Any, tokenizer: Any) -> Exclusion:
    """The exclusion rule the dictionary was trained with (its provenance), else the default
    rule with the tokenizer's special tokens."""
    recorded = getattr(dictionary, "provenance", {}).get("data_exclusion")
    if recorded:
        return Exclusion.from_json(recorded)
    return Exclusion(special_ids=list(getattr(tokenizer, "all_special_ids", []) or []))


@torch.no_grad()
def embed_documents(dictionary: Any, lm: Any, documents: Sequence[Document], hookpoint: str, *,
                    pooling: Pooling = "max", max_tokens: int = MAX_TOKENS,
                    batch_size: int = BATCH_SIZE, exclusion: Exclusion | None = None,
                    progress: bool = False, settings: dict | None = None) -> Embeddings:
    """Embed `documents` with `dictionary` read at `hookpoint` of `lm` (a
    `saelab.models.LoadedModel`): each document's first `max_tokens` tokens run through the
    model, `batch_size` documents a forward (shortest first, right-padded), and the codes of its
    kept positions are pooled (`pooling`). A ConfigError says when the hookpoint's width is not
    the dictionary's input width."""
    if pooling not in ("max", "mean"):
        raise ConfigError(f"pooling must be 'max' or 'mean', got {pooling!r}")
    if max_tokens < 2 or batch_size < 1:
        raise ConfigError(f"max_tokens must be at least 2 and batch_size at least 1, got "
                          f"{max_tokens} and {batch_size}")
    key = _one_hookpoint(lm.model, hookpoint)
    exclusion = exclusion or exclusion_for(dictionary, lm.tokenizer)
    encoded = lm.tokenizer([d.text for d in documents], truncation=True, max_length=max_tokens,
                           return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    order = sorted(range(len(documents)), key=lambda i: len(ids[i]))
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = [None] * len(documents)
    device = next(lm.model.parameters()).device
    with Capture(lm.model, [key]) as cap:
        for start in tqdm(range(0, len(order), batch_size), desc="embedding documents",
                          unit="batch", disable=not progress):
            batch = order[start:start + batch_size]
            ids_BT, mask_BT = _padded([ids[i] for i in batch], _pad_id(lm.tokenizer))
            acts_BTD = cap.run(input_ids=ids_BT.to(device),
                               attention_mask=mask_BT.to(device))[key].float()
            _check_width(acts_BTD, dictionary, key)
            exclusion.calibrate(ids_BT.to(device), {key: acts_BTD})
            keep_BT = mask_BT.to(device).bool() & exclusion.keep_mask(
                ids_BT.to(device), {key: acts_BTD}).to(device)
            keep_BT[:, 0] = False  # the first position: an attention sink, never trained on
            codes_RF = dictionary.encode(acts_BTD[keep_BT]).float()
            where = keep_BT.nonzero()  # [R, 2]: (row in batch, position) of each code row
            for b, i in enumerate(batch):
                sel = where[:, 0] == b
                rows[i] = _pool(codes_RF[sel], where[sel, 1].cpu(), offsets[i], pooling)
    return _assemble(rows, dictionary.n_latents, list(documents), {
        **(settings or {}), "hookpoint": key, "pooling": pooling, "max_tokens": max_tokens,
        "exclusion": exclusion.to_json()})


def _one_hookpoint(model: torch.nn.Module, hookpoint: str) -> str:
    hps = resolve(model, [hookpoint])
    if len(hps) != 1:
        raise ConfigError(f"hookpoint {hookpoint!r} matches {len(hps)} modules of the model; "
                          f"name the one the dictionary reads")
    return hps[0].key


def _check_width(acts_BTD: Tensor, dictionary: Any, key: str) -> None:
    if acts_BTD.shape[-1] != dictionary.d_in:
        raise ConfigError(f"the dictionary reads {dictionary.d_in}-wide activations but "
                          f"hookpoint {key!r} of this model gives {acts_BTD.shape[-1]}: the "
                          f"dictionary was trained on another model or hookpoint (see its "
                          f"cfg.json provenance)")
    if not torch.isfinite(acts_BTD).all():
        raise DataError(f"the activation at {key!r} holds NaN or inf: check the model's weights")


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _padded(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded token ids [B, T] and attention mask [B, T] (a causal model's real tokens
    are unchanged by padding after them)."""
    width = max(1, max(map(len, seqs)))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, seq in enumerate(seqs):
        ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, :len(seq)] = 1
    return ids, mask


def _pool(codes_RF: Tensor, positions_R: Tensor, offsets: list, pooling: Pooling
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One document's row: (latents, pooled values, peak spans, tokens pooled)."""
    if codes_RF.shape[0] == 0:
        return (np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 2), np.int32), 0)
    peak_F, at_F = codes_RF.max(0)
    pooled_F = peak_F if pooling == "max" else codes_RF.mean(0)
    latents = (pooled_F != 0).nonzero().squeeze(1)
    spans = np.asarray([offsets[int(positions_R[int(at_F[f])])] for f in latents],
                       dtype=np.int32).reshape(-1, 2)
    return (latents.cpu().numpy().astype(np.int32), pooled_F[latents].cpu().numpy(), spans,
            int(codes_RF.shape[0]))


def _assemble(rows: list, n_latents: int, documents: list[Document],
              settings: dict) -> Embeddings:
    """The documents' rows (latents, values, spans, tokens) as one CSR Embeddings."""
    counts = [len(r[0]) for r in rows]

    def joined(k: int, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([r[k] for r in rows]) if rows else empty

    return Embeddings(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      joined(0, np.zeros(0, np.int32)), joined(1, np.zeros(0, np.float32)),
                      joined(2, np.zeros((0, 2), np.int32)),
                      np.asarray([r[3] for r in rows], dtype=np.int32), n_latents, documents,
                      settings)


