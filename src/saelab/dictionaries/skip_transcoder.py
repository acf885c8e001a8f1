"""Skip transcoder (Paulo, Shabalin and Belrose 2025, "Transcoders Beat Sparse Autoencoders for
Interpretability").

Relative to a TopK SAE, it predicts a module's output from its input (see transcoder.py) and adds
a dense linear skip term: y_hat = W_dec^T TopK(W_enc x + b_enc) + b_dec + W_skip x, so the
latents only have to explain what a linear map of the input cannot.

Choices where the paper leaves room:
- W_skip [d_out, d_in] starts at zero (as in the paper's code, sparsify): training begins as a
  plain transcoder and the linear part grows as the data asks for it.
- The trainer scales input and target to unit mean squared norm each (sx, sy): folding the
  scales back multiplies W_skip by sx / sy, as the transcoder's W_enc.
- `decode(codes)` is the sparse part alone (it cannot see x); `forward(x).x_hat` adds the skip
  term, which `forward(x).skip` also returns on its own.
Everything else (activation, encoder on x itself, the error without a target) is the
transcoder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saelab.dictionaries._formats import PLAIN, SPARSIFY_PLAIN, SaeLensMapping, SparsifyMapping
from saelab.dictionaries._registry import register
from saelab.dictionaries.transcoder import SAELENS, Transcoder, TranscoderConfig


class SkipOutput(NamedTuple):
    """What `skip_transcoder(x)` returns."""

    x_hat: Tensor
    """Predicted output [B, d_out]: sparse part + skip term."""
    codes: Tensor
    """Dense latent codes [B, n_latents]."""
    skip: Tensor
    """The linear skip term W_skip x [B, d_out]."""


@dataclass
class SkipTranscoderConfig(TranscoderConfig):
    """The transcoder's fields; the skip term has no settings."""


@register("skip_transcoder")
class SkipTranscoder(Transcoder):
    """Transcoder with a linear skip term. Weights: W_enc [n_latents, d_in], b_enc, W_dec
    [n_latents, d_out], b_dec [d_out], W_skip [d_out, d_in]."""

    Config = SkipTranscoderConfig
    formats = {"saelens": SaeLensMapping(architecture="skip_transcoder",
                                         tensors={**PLAIN, "W_skip": "W_skip"}, **SAELENS),
               "sparsify": SparsifyMapping(transcode=True, skip_connection=True,
                                           tensors={**SPARSIFY_PLAIN, "W_skip": "W_skip"},
                                           fixed={"activation": "topk"})}

    def __init__(self, cfg: SkipTranscoderConfig):
        super().__init__(cfg)
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        super().fold_scales(input_scale, target_scale)
        self.W_skip.mul_(input_scale / target_scale)

    def skip(self, x: Tensor) -> Tensor:
        return x @ self.W_skip.t()

    def forward(self, x: Tensor) -> SkipOutput:
        codes = self.encode(x)
        skip = self.skip(x)
        return SkipOutput(self.decode(codes) + skip, codes, skip)
