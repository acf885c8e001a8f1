"""Gradient SAE (g-SAE; Olmo, Wilson, Forsey, Hepner, Howe and Wingate 2024, "Features that Make
a Difference: Leveraging Gradients for Improved Dictionary Learning", arXiv 2411.10397).

What changes relative to TopK: only which k latents are kept. TopK keeps the k largest
pre-activations z; g-SAE ranks the latents by the paper's score (its TopK argument
z + beta z o |W_dec^T grad_x L(x)|),

    score_i = z_i + beta * z_i * a_i,    a_i = |W_dec_i . g|,

where g = d(loss)/d(x) is the gradient of the language model's next-token loss with respect to
the activation x being encoded, so that W_dec_i . g is how much a small step along atom i would
change the loss. The k latents with the highest score are kept, with their ordinary codes
ReLU(z_i) (the score only selects; it never scales a code). A latent with a small activation but
a large effect on the loss can then win a place that plain TopK gives to a larger, inert one.
Reconstruction loss, AuxK and the sparse backward are TopK's. There is no public code; this file
follows the paper's formula.

Where the paper leaves room:
- `gradient_scale` "none" (default) is the paper's a_i as it stands; then beta carries the
  gradient's units (the loss's reduction, the input normalisation, the layer's gain), so it has
  to be swept per setting. "row_mean" (saelab's option) divides a by its mean over the latents
  in each row, so that beta means the same on every token and layer (beta 1: an atom twice as
  loss-relevant as the average gets a score 1.5x that of an average one with the same
  activation); it changes the effective beta token by token. A row whose gradient is zero (e.g.
  the last position of a context, which predicts nothing) is plain TopK either way;
- beta defaults to 1; beta = 0 is TopK exactly;
- at inference, where no gradient is at hand (`encode(x)`, `dictionary(x)`, splicing), the
  selection is TopK's; `encode(x, grad)` gives the gradient-aware selection;
- the dictionary must reconstruct its input (d_out == d_in): g is a gradient in the input space
  and the atoms are read in it.

Gradients reach the loss as `StepState.extra["grads"]` [B, d_in]; the trainer fills it from
`saelab.fit(sae, WithGradients(x, grads))` (saelab.train.data.WithGradients) or from a store
captured with gradients (`capture_to_store(..., gradients=True)`, which writes d(loss)/d(acts)
under the hookpoint `<hookpoint>.grad`; see saelab.capture.gradients). `fit` refuses plain
activations when beta > 0; `loss` without gradients selects like TopK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saelab.config import check, option
from saelab.dictionaries._base import Loss, Output, StepState
from saelab.dictionaries._registry import register
from saelab.dictionaries.topk import TopK, TopKConfig
from saelab.errors import DataError
from saelab.ops import SparseCodes, linear, to_dense
from saelab.ops.sparse import selected_encoder_grads

GRADS = "grads"
"""Key of the per-row gradients in `StepState.extra`."""


@dataclass
class GSAEGradientConfig(TopKConfig):
    beta: float = option(1.0, "Weight of the gradient term in the TopK selection score "
                              "z + beta * z * |W_dec g|; 0 is plain TopK.")
    gradient_scale: Literal["none", "row_mean"] = option(
        "none", "none: |W_dec g| as it stands (the paper's score); row_mean (saelab's): divided "
                "by its mean over the latents in each row.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.beta, (int, float)) and not isinstance(self.beta, bool)
              and self.beta >= 0 and self.beta != float("inf"), "beta",
              f"must be a finite number >= 0, got {self.beta!r}")
        check(self.gradient_scale in ("none", "row_mean"), "gradient_scale",
              f"must be 'none' or 'row_mean', got {self.gradient_scale!r}")
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in}: g-SAE reads the loss gradient of its input "
              f"through its decoder atoms (it is not a transcoder), got {self.d_out}")


@register("gsae_gradient")
class GSAEGradient(TopK):
    """TopK SAE whose selection of the k active latents is weighted by the loss gradient
    (weights as TopK)."""

    Config = GSAEGradientConfig
    formats = {}  # no counterpart in SAELens or sparsify (TopK's mapping is not inherited)

    @property
    def needs(self) -> frozenset[str]:
        """Gradients when training uses them (`saelab.fit` refuses data without them)."""
        return frozenset({"gradients"} if self.cfg.beta > 0 else ())

    @torch.no_grad()
    def gradient_weights(self, grad: Tensor) -> Tensor:
        """a [B, n_latents]: |W_dec_i . g| per latent; with gradient_scale "row_mean", divided by
        its mean over the latents (zero rows stay zero)."""
        a = linear(grad.to(self.W_dec.dtype), self.W_dec).abs()  # [B, n_latents]
        if self.cfg.gradient_scale == "none":
            return a
        return a / a.mean(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)

    @torch.no_grad()
    def selection_scores(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """The ranking score [B, n_latents]: z + beta z a, or z itself without a gradient."""
        if grad is None or self.cfg.beta == 0:
            return pre
        return pre + self.cfg.beta * pre * self.gradient_weights(grad)

    def select(self, x: Tensor, grad: Tensor | None = None) -> SparseCodes:
        """Sparse codes [B, k]: ReLU(z) at the k latents of highest score (differentiable in
        the values, through the sparse backward)."""
        self._check_grad(x, grad)
        xc = self.centered(x)
        with torch.no_grad():
            pre = linear(xc, self.W_enc, self.b_enc)  # [B, n_latents]
            indices = self.selection_scores(pre, grad).topk(self.cfg.k, dim=-1,
                                                            sorted=False).indices
            values = pre.gather(1, indices).relu_()
        return SparseCodes(_EncodeAt.apply(xc, self.W_enc, self.b_enc, values, indices), indices)

    def encode(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        """Dense codes [B, n_latents]; the gradient-aware selection with `grad` [B, d_in],
        TopK's without."""
        return to_dense(self.select(x, grad), self.n_latents)

    def forward(self, x: Tensor, grad: Tensor | None = None) -> Output:
        codes = self.encode(x, grad)
        return Output(self.decode(codes), codes)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        grad = state.extra.get(GRADS)
        codes = self.select(x, None if grad is None else grad.to(x.device))
        return self.loss_of_codes(self.centered(x), target, codes, state)

    def _check_grad(self, x: Tensor, grad: Tensor | None) -> None:
        if grad is not None and grad.shape != x.shape:
            raise DataError(f"gradients have shape {tuple(grad.shape)}; g-SAE expects one per "
                            f"input row, [batch={x.shape[0]}, d_in={self.d_in}]")


class _EncodeAt(torch.autograd.Function):
    """Codes ReLU(xc W_enc[i]^T + b_enc[i]) at given latents i [B, k], already computed in the
    forward (`values`); the backward touches only those latents, as TopK's sparse encoder."""

    @staticmethod
    def forward(ctx, xc: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor,
                indices: Tensor) -> Tensor:
        ctx.save_for_backward(xc, W_enc, values, indices)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        return (*selected_encoder_grads(ctx, grad_values), None, None)
