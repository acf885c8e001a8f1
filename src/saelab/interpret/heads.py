"""Which attention heads a latent of an attention-output SAE reads from.

An SAE trained on the `z` site (per-head attention outputs, heads concatenated; Kissane et al.
2024, "Interpreting Attention Layer Outputs with Sparse Autoencoders") has decoder rows made of
n_heads blocks of d_head. The share of a latent's squared decoder norm in each block attributes
the latent to heads: a latent with most of its norm in one head is that head's feature.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saelab.errors import ConfigError


class HeadAttribution(NamedTuple):
    """Per-latent attribution of decoder norm to heads."""

    share: Tensor
    """Fraction of each latent's squared decoder norm per head [n_latents, n_heads] (rows sum
    to 1)."""
    top_head: Tensor
    """The head holding the largest share, per latent [n_latents]."""
    top_share: Tensor
    """That largest share, per latent [n_latents]."""


def head_attribution(W_dec: Tensor, n_heads: int) -> HeadAttribution:
    """Split each decoder row [n_latents, n_heads * d_head] into heads and measure its norm."""
    n_latents, width = W_dec.shape
    if n_heads < 1 or width % n_heads:
        raise ConfigError(f"n_heads: decoder width {width} is not a multiple of {n_heads} heads")
    per_head = W_dec.detach().float().reshape(n_latents, n_heads, width // n_heads)
    energy = per_head.pow(2).sum(-1)  # [n_latents, n_heads]
    share = energy / energy.sum(-1, keepdim=True).clamp_min(1e-30)
    top_share, top_head = share.max(dim=-1)
    return HeadAttribution(share, top_head, top_share)


def heads_of_model(model: torch.nn.Module) -> int | None:
    """Number of attention heads from a transformers config, if the model has one."""
    cfg = getattr(model, "config", None)
    for name in ("num_attention_heads", "n_head", "num_heads"):
        if cfg is not None and isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    return None
