"""The JumpReLU activation and its straight-through estimators (Rajamanoharan et al. 2024,
"Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders").

    jumprelu(pre, theta) = pre * H(pre - theta)

Neither the step H nor the activation has a useful gradient for theta, so training uses the
paper's pseudo-derivatives with a rectangle kernel K of width eps (`bandwidth`),
K(u) = 1 for |u| < 1/2:

    d JumpReLU_theta(pre) / d theta := -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta      := -(1 / eps) K((pre - theta) / eps)

`jumprelu_ste` passes H(pre - theta) to the pre-activation; `step_ste` passes nothing to it.
Thresholds broadcast against the pre-activations ([n_latents] against [B, n_latents], or both
[B, m]); their gradient is summed where they broadcast. Variants with one threshold per latent or
one for all (JumpReLU, BatchTopK and the allocation SAEs at inference) share these.
"""

from __future__ import annotations

import torch
from torch import Tensor


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """pre * H(pre - threshold): zero at or below the threshold, the pre-activation above it.
    `threshold` broadcasts against `pre` (e.g. [n_latents] against [B, n_latents])."""
    return torch.where(pre > threshold, pre, 0.0)


def _window(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """K((pre - theta) / eps) for the rectangle kernel: 1 where |pre - theta| < eps / 2."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    """JumpReLU with the paper's pseudo-derivative for the threshold."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return jumprelu(pre, threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        g_pre = grad * (pre > threshold) if ctx.needs_input_grad[0] else None
        g_theta = None
        if ctx.needs_input_grad[1]:
            # d/d theta := -(theta / eps) K((pre - theta) / eps); summed where theta broadcast
            g = grad * _window(pre, threshold, ctx.bandwidth) * (-threshold / ctx.bandwidth)
            g_theta = g.sum_to_size(threshold.shape)
        return g_pre, g_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta), with a pseudo-derivative for theta only (none for the pre-activation)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        g_theta = None
        if ctx.needs_input_grad[1]:
            # d/d theta := -(1 / eps) K((pre - theta) / eps); summed where theta broadcast
            g = grad * _window(pre, threshold, ctx.bandwidth) / -ctx.bandwidth
            g_theta = g.sum_to_size(threshold.shape)
        return None, g_theta, None


def jumprelu_ste(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """`jumprelu(pre, threshold)` whose threshold gets the paper's pseudo-derivative (kernel
    width `bandwidth`); the pre-activation gets H(pre - threshold)."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step_ste(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(pre - threshold) as 0/1 in pre's dtype, whose threshold gets the paper's
    pseudo-derivative; no gradient reaches the pre-activation (the L0 term trains theta only)."""
    return _Step.apply(pre, threshold, bandwidth)


def log_exact(theta: Tensor) -> Tensor:
    """log(theta) chosen, among the floats next to it, so that exp() gives theta back exactly
    where such a float exists (it does not for every float: exp skips values), else as close
    as those floats get. How a threshold read from a file becomes a `log_threshold`."""
    theta = theta.clamp_min(0)
    base = theta.log()
    best, err = base, (base.exp() - theta).abs()
    for direction in (float("inf"), float("-inf")):
        cand = base
        for _ in range(3):
            cand = torch.nextafter(cand, torch.full_like(cand, direction))
            e = (cand.exp() - theta).abs()
            better = e < err
            best, err = torch.where(better, cand, best), torch.where(better, e, err)
    return best
