"""Carry a dictionary, a probe or a steering vector from one model's stream to another's through
a pair of affine maps (`saelab.transfer.affine`).

Chen et al. 2025 ("Transferring Linear Features Across Language Models With Model Stitching",
section 3) transfer an SAE trained on model A to model B by reading B's stream through the map
down to A (B -> A) in front of the encoder and writing through the map up (A -> B) behind the
decoder. With down(y) = W_d y + c_d and up(x) = W_u x + c_u, saelab folds both maps into the
dictionary's own weights, so the result is an ordinary dictionary of the same architecture on
B's stream that saves, loads, evaluates, splices and steers like any other:

    W_dec' = W_dec W_u^T                      decoder rows: each direction mapped up
    b_dec' = W_u b_dec + c_u                  the decoder bias mapped up
    W_enc' = W_enc W_d                        encoder rows read B's stream through the map down
    b_enc' = b_enc + W_enc (W_d b_dec' + c_d - b_dec)

so that pre'(y) = W_enc' (y - b_dec') + b_enc' = W_enc (down(y) - b_dec) + b_enc = pre(down(y)):
every latent fires on y exactly as it fires on down(y), and decode'(z) = up(decode(z)). Latent-
space parameters (JumpReLU thresholds, ...) are kept as they are. The fold is checked in float64
on a sample before the dictionary is returned: an architecture whose encoder is not of this form
(a gated SAE's two biases, per-input normalisation) is refused by name rather than transferred
wrongly. The transferred decoder rows are not of unit norm; `init_for_training` rescales them (and
the matching encoder rows) when the transfer is used to start training on B (saelab's trainer
keeps decoder rows at unit norm).

A linear probe p(x) = w . x + b on A's stream becomes w' = W_d^T w, b' = w . c_d + b on B's (it
reads B's stream through the map down). A steering vector v (a direction added to A's stream)
becomes W_u v, the linear part of the map up (a direction has no offset).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from saelab.dictionaries import get
from saelab.errors import ConfigError
from saelab.transfer.affine import AffineMap, Stitch

FOLDED = ("W_enc", "b_enc", "W_dec", "b_dec")


def maps_from(stitch: Stitch, source: str) -> tuple[AffineMap, AffineMap]:
    """(up: source -> target, down: target -> source) for a dictionary on side `source` ("a" or
    "b") of `stitch`."""
    if source == "a":
        return stitch.a_to_b, stitch.b_to_a
    if source == "b":
        return stitch.b_to_a, stitch.a_to_b
    raise ConfigError(f"source must be 'a' or 'b' (the side of the map the dictionary is on), "
                      f"got {source!r}")


def side_of(dictionary, stitch: Stitch, allow_hookpoint_mismatch: bool = False) -> str:
    """The side ("a" or "b") of `stitch` whose width and hookpoint the dictionary reads: by its
    recorded hookpoint when the widths are equal, else by width. ConfigError when no side has
    its width, or (unless `allow_hookpoint_mismatch`) when the dictionary records a hookpoint
    and the side of its width was fitted at another one."""
    d_a, d_b = stitch.a_to_b.d_in, stitch.b_to_a.d_in
    hookpoint = getattr(dictionary, "provenance", {}).get("hookpoint")
    fits = [s for s, d in (("a", d_a), ("b", d_b)) if d == dictionary.d_in]
    if len(fits) == 2 and hookpoint:
        fits = [s for s in fits if stitch.info.get(f"hookpoint_{s}") == hookpoint] or fits
    if not fits:
        raise ConfigError(f"the dictionary reads {dictionary.d_in}-wide activations but the map "
                          f"joins a {d_a}-wide stream ({stitch.info.get('model_a', 'a')}) and a "
                          f"{d_b}-wide one ({stitch.info.get('model_b', 'b')}): it was trained "
                          f"on another model or hookpoint")
    side = fits[0]
    fitted = stitch.info.get(f"hookpoint_{side}")
    if hookpoint and fitted and hookpoint != fitted and not allow_hookpoint_mismatch:
        raise ConfigError(f"the dictionary reads hookpoint {hookpoint!r} but the map was fitted "
                          f"at {fitted!r} of {stitch.info.get('model_' + side, side)}: fit a map "
                          f"at the dictionary's hookpoint (saelab stitch), or allow the "
                          f"mismatch if the two streams are the same")
    return side


@torch.no_grad()
def transfer_dictionary(dictionary, up: AffineMap, down: AffineMap,
                        provenance: dict | None = None):
    """The dictionary on the target stream (see the module docstring): `up` maps the source
    stream to the target, `down` the target to the source. Same architecture and config, d_in
    the target's width; `provenance` (e.g. the target's model and hookpoint) is recorded, with
    the source's under "transferred_from"."""
    _check(dictionary, up, down)
    W_u, c_u, W_d, c_d = up.weight.double(), up.bias.double(), down.weight.double(), \
        down.bias.double()
    state = {k: v.detach().double() for k, v in dictionary.state_dict().items()}
    b_dec = W_u @ state["b_dec"] + c_u
    folded = {"W_dec": state["W_dec"] @ W_u.T, "b_dec": b_dec, "W_enc": state["W_enc"] @ W_d,
              "b_enc": state["b_enc"] + state["W_enc"] @ (W_d @ b_dec + c_d - state["b_dec"])}
    cfg = dataclasses.replace(dictionary.cfg, d_in=up.d_out, d_out=up.d_out)
    target = get(dictionary.architecture)(cfg).double()
    target.load_state_dict({**state, **folded})
    _verify(dictionary, target, down)
    dtype = dictionary.W_dec.dtype
    target = target.to(dtype).train(dictionary.training)
    target.provenance = {**(provenance or {}), "transferred_from": dict(dictionary.provenance)}
    return target


def _check(dictionary, up: AffineMap, down: AffineMap) -> None:
    if dictionary.d_in != dictionary.d_out:
        raise ConfigError(f"{dictionary.architecture} predicts another activation than it reads "
                          f"(a transcoder): only dictionaries that reconstruct their input can be "
                          f"transferred through one pair of maps")
    if getattr(dictionary.cfg, "input_norm", "none") != "none":
        raise ConfigError(f"the dictionary normalises each input ({dictionary.cfg.input_norm}): "
                          f"that is not affine, so it cannot be folded through a map")
    if up.d_in != dictionary.d_in or down.d_out != dictionary.d_in:
        raise ConfigError(f"the dictionary reads {dictionary.d_in}-wide activations, the maps "
                          f"go from {up.d_in} to {up.d_out} and back from {down.d_in} to "
                          f"{down.d_out}: mismatched widths (the map joins other hookpoints)")
    if up.d_out != down.d_in:
        raise ConfigError(f"the map up ends in a {up.d_out}-wide stream but the map down starts "
                          f"from a {down.d_in}-wide one: they are not a pair")
    state = dictionary.state_dict()
    missing = [k for k in FOLDED if k not in state]
    if missing:
        raise ConfigError(f"{dictionary.architecture} has no {', '.join(missing)}: only "
                          f"dictionaries with an encoder and a decoder (W_enc, b_enc, W_dec, "
                          f"b_dec) can be transferred")
    stream = [k for k, v in state.items() if k not in FOLDED and dictionary.d_in in v.shape
              and dictionary.d_in != dictionary.n_latents]
    if stream:
        raise ConfigError(f"{dictionary.architecture} has parameters in the stream's space "
                          f"besides its encoder and decoder ({', '.join(stream)}): saelab cannot "
                          f"fold them through the map")


def _verify(source, target, down: AffineMap, rows: int = 64) -> None:
    """Check in float64 that target.encode(y) == source.encode(down(y)) on a sample."""
    g = torch.Generator().manual_seed(0)
    spread = target.W_dec.norm(dim=1).mean().clamp_min(1.0)
    y = target.b_dec + spread * torch.randn(rows, target.d_in, generator=g, dtype=torch.float64)
    src = copy.deepcopy(source).double().eval()
    down64 = AffineMap(down.weight.double(), down.bias.double())
    want, got = src.encode(down64(y)), target.eval().encode(y)
    tol = 1e-6 * float(want.abs().max().clamp_min(1.0))
    if not torch.allclose(want, got, atol=tol, rtol=1e-6):
        raise ConfigError(f"{source.architecture}'s encoder is not W_enc (x - b_dec) + b_enc "
                          f"followed by an activation, so folding the maps into its weights "
                          f"would change what its latents fire on: it cannot be transferred")


def init_for_training(dictionary) -> None:
    """Rescale a transferred dictionary for training on the target (in place): unit-norm
    decoder rows (saelab's trainer keeps them so), each row's norm moved into its encoder row and
    encoder bias. The product code x decoder row of every latent is unchanged; for a ReLU or
    JumpReLU encoder the whole function is, for TopK the ranking of latents changes with it."""
    with torch.no_grad():
        norms = dictionary.W_dec.norm(dim=1).clamp_min(1e-8)  # [n_latents]
        dictionary.W_dec.div_(norms[:, None])
        dictionary.W_enc.mul_(norms[:, None])
        dictionary.b_enc.mul_(norms)


class Probe(NamedTuple):
    """A linear probe: logits = x W^T + b."""

    weight: Tensor
    """W [n_classes, d] (one row for a binary probe)."""
    bias: Tensor
    """b [n_classes]."""


def transfer_probe(probe: Probe, down: AffineMap) -> Probe:
    """The probe on the target stream: it reads the target through the map down to the source
    (W' = W W_d, b' = W c_d + b)."""
    weight = probe.weight.reshape(-1, probe.weight.shape[-1])
    if weight.shape[1] != down.d_out:
        raise ConfigError(f"the probe reads {weight.shape[1]}-wide activations, the map down "
                          f"gives {down.d_out}-wide ones: mismatched widths")
    w = weight.to(down.weight)
    return Probe(w @ down.weight, w @ down.bias + probe.bias.reshape(-1).to(down.bias))


def transfer_direction(vector: Tensor, up: AffineMap) -> Tensor:
    """A steering vector of the source stream [.., d_source] on the target stream: W_u v."""
    if vector.shape[-1] != up.d_in:
        raise ConfigError(f"the vector is {vector.shape[-1]}-wide, the map up reads "
                          f"{up.d_in}-wide activations: mismatched widths")
    return up.direction(vector)
