"""What the allocation SAEs (Mutual Choice, Feature Choice; Ayonrinde 2024) share: their
auxiliary-loss fields and their training loss. They differ only in which (input, latent) pairs a
batch picks and how the inference thresholds are kept."""

from __future__ import annotations

import torch
from torch import Tensor

from saelab.config import check
from saelab.dictionaries._base import Dictionary, Loss, StepState, fvu, squared_error
from saelab.ops import sparse_decode
from saelab.ops.auxk import auxk_term
from saelab.ops.listed import listed_encode
from saelab.ops.zipf import zipf_aux_term

AUX_CHOICES = ("zipf", "auxk", "none")


def check_aux_fields(cfg) -> None:
    """Validate (and default) the auxiliary-loss fields shared by the allocation SAEs."""
    check(cfg.aux in AUX_CHOICES, "aux", f"must be one of {AUX_CHOICES}, got {cfg.aux!r}")
    check(cfg.aux_coeff >= 0, "aux_coeff", f"must be >= 0, got {cfg.aux_coeff}")
    if cfg.aux_k is None:
        cfg.aux_k = max(1, cfg.d_in // 2)
    check(isinstance(cfg.aux_k, int) and cfg.aux_k > 0, "aux_k",
          f"must be a positive integer, got {cfg.aux_k!r}")
    check(cfg.zipf_exponent > 0, "zipf_exponent", f"must be > 0, got {cfg.zipf_exponent}")
    check(0 <= cfg.usage_decay < 1, "usage_decay", f"must be in [0, 1), got {cfg.usage_decay}")
    check(0 <= cfg.threshold_decay < 1, "threshold_decay",
          f"must be in [0, 1), got {cfg.threshold_decay}")


def auxiliary(dictionary: Dictionary, xc: Tensor, residual: Tensor, active: Tensor,
              state: StepState) -> Tensor | None:
    """The auxiliary term the config asks for (None when there is none this step): aux_zipf_loss
    (updating the usage estimate with the latents in `active`, a 1-D tensor of latent indices,
    one per active pair) or AuxK."""
    cfg = dictionary.cfg
    if cfg.aux == "none" or cfg.aux_coeff == 0:
        return None
    if cfg.aux == "zipf":
        return zipf_aux_term(dictionary, xc, residual, active, state.step,
                             exponent=cfg.zipf_exponent, decay=cfg.usage_decay, k_aux=cfg.aux_k)
    return auxk_term(cfg.aux_coeff, cfg.aux_k, state.dead_mask, xc, residual, dictionary.W_enc,
                     dictionary.b_enc, dictionary.W_dec)


def allocated_loss(dictionary: Dictionary, x: Tensor, state: StepState, target: Tensor | None,
                   choose, update_thresholds) -> Loss:
    """The training loss shared by the allocation variants (Mutual and Feature Choice): encode
    the entries `choose(pre)` picks as per-row lists, fold the fired values into the inference
    thresholds (`update_thresholds(values, indices, fired)`, training mode only), reconstruct,
    and add the configured auxiliary term. Metrics: fvu, l0, l0_max, inputs_without_latents."""
    target = x if target is None else target
    xc = dictionary.centered(x)
    values, indices, valid = listed_encode(xc, dictionary.W_enc, dictionary.b_enc, choose)
    fired = valid & (values.detach() > 0)
    if dictionary.training and bool(fired.any()):
        update_thresholds(values.detach(), indices, fired)
    x_hat = sparse_decode(values, indices, dictionary.W_dec) + dictionary.b_dec
    mse = squared_error(x_hat, target).mean()
    terms, total = {"mse": mse}, mse
    aux = auxiliary(dictionary, xc, target - x_hat.detach(), indices[fired], state)
    if aux is not None:
        terms["aux"] = aux
        total = total + dictionary.cfg.aux_coeff * aux
    active = torch.zeros(dictionary.n_latents, dtype=torch.bool, device=x.device)
    active[indices[fired]] = True
    l0 = fired.sum(-1).float()
    metrics = {"fvu": fvu(x_hat.detach(), target).item(), "l0": l0.mean().item(),
               "l0_max": l0.max().item(), "inputs_without_latents": (l0 == 0).float()
               .mean().item()}
    return Loss(total, terms, metrics, active)
