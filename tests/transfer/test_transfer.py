"""Transfer of a dictionary, a probe and a steering vector through a pair of affine maps: the
transferred object computes on the target stream what the original computes on the stream
mapped back, and what cannot be folded is refused by name."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.transfer import (AffineMap, Probe, Stitch, init_for_training, maps_from, side_of,
                             transfer_dictionary, transfer_direction, transfer_probe)

D_A, D_B = 12, 16


def maps(seed: int = 0) -> tuple[AffineMap, AffineMap]:
    """up: A -> B of full column rank, down: its exact left inverse (down(up(x)) == x)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D_B, D_A, generator=g)
    c = torch.randn(D_B, generator=g)
    pinv = torch.linalg.pinv(w)
    return AffineMap(w, c), AffineMap(pinv, -pinv @ c)


@pytest.mark.parametrize("architecture", ["topk", "relu", "jumprelu", "batchtopk"])
def test_transferred_latents_fire_on_the_target_as_on_the_stream_mapped_back(architecture):
    up, down = maps()
    sae = saelab.create(architecture, d_in=D_A, n_latents=40, **(
        {"k": 4} if "topk" in architecture else {}))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    moved = transfer_dictionary(sae, up, down, provenance={"model": "b"})
    y = torch.randn(64, D_B) * 2
    assert torch.allclose(moved.encode(y), sae.encode(down(y)), atol=1e-4)
    codes = sae.encode(down(y))
    assert torch.allclose(moved.decode(codes), up(sae.decode(codes)), atol=1e-4)
    assert (moved.d_in, moved.architecture) == (D_B, architecture)
    assert moved.provenance["model"] == "b" and "transferred_from" in moved.provenance


def test_an_exact_map_keeps_the_reconstruction_of_every_row() -> None:
    up, down = maps()
    sae = saelab.create("topk", d_in=D_A, n_latents=40, k=4)
    x = torch.randn(128, D_A)
    moved = transfer_dictionary(sae, up, down)
    assert torch.allclose(moved(up(x)).x_hat, up(sae(x).x_hat), atol=1e-4)


def test_transferred_dictionary_saves_and_loads(tmp_path) -> None:
    up, down = maps()
    moved = transfer_dictionary(saelab.create("topk", d_in=D_A, n_latents=40, k=4), up, down)
    moved.save(tmp_path / "sae")
    back = saelab.load(tmp_path / "sae")
    y = torch.randn(8, D_B)
    assert torch.equal(back.encode(y), moved.encode(y))


def test_init_for_training_keeps_each_latents_contribution() -> None:
    up, down = maps()
    moved = transfer_dictionary(saelab.create("relu", d_in=D_A, n_latents=40), up, down)
    y = torch.randn(32, D_B)
    before = moved(y).x_hat
    init_for_training(moved)
    assert torch.allclose(moved.W_dec.norm(dim=1), torch.ones(40), atol=1e-5)
    assert torch.allclose(moved(y).x_hat, before, atol=1e-4)  # exact for a ReLU encoder


def test_probe_reads_the_target_through_the_map_down() -> None:
    up, down = maps()
    probe = Probe(torch.randn(3, D_A), torch.randn(3))
    moved = transfer_probe(probe, down)
    y = torch.randn(20, D_B)
    want = down(y) @ probe.weight.T + probe.bias
    assert torch.allclose(y @ moved.weight.T + moved.bias, want, atol=1e-4)


def test_steering_vector_moves_by_the_linear_part_only() -> None:
    up, _ = maps()
    v, x = torch.randn(D_A), torch.randn(5, D_A)
    moved = transfer_direction(v, up)
    assert torch.allclose(up(x + v) - up(x), moved.expand(5, -1), atol=1e-4)


def test_mismatched_widths_are_refused_by_name() -> None:
    up, down = maps()
    sae = saelab.create("topk", d_in=D_A + 1, n_latents=40, k=4)
    with pytest.raises(ConfigError, match="mismatched widths"):
        transfer_dictionary(sae, up, down)
    with pytest.raises(ConfigError, match="mismatched widths"):
        transfer_probe(Probe(torch.randn(1, D_B), torch.zeros(1)), down)
    with pytest.raises(ConfigError, match="mismatched widths"):
        transfer_direction(torch.randn(D_B), up)
    with pytest.raises(ConfigError, match=f"{D_A + 1}-wide"):
        side_of(sae, Stitch(up, down, {}))


def test_dictionaries_whose_encoder_cannot_be_folded_are_refused() -> None:
    up, down = maps()
    for architecture, message in (("gated", "b_enc"), ("transcoder", "cannot be transferred")):
        sae = saelab.create(architecture, d_in=D_A, n_latents=40)
        with pytest.raises(ConfigError, match=message):
            transfer_dictionary(sae, up, down)


def test_side_of_a_map_follows_width_then_hookpoint() -> None:
    up, down = maps()
    stitch = Stitch(up, down, {"hookpoint_a": "x.3", "hookpoint_b": "y.5"})
    assert side_of(saelab.create("topk", d_in=D_B, n_latents=8, k=2), stitch) == "b"
    assert maps_from(stitch, "b") == (down, up)
    with pytest.raises(ConfigError, match="'a' or 'b'"):
        maps_from(stitch, "c")


def test_a_dictionary_of_another_hookpoint_is_refused_unless_allowed() -> None:
    up, down = maps()
    stitch = Stitch(up, down, {"model_a": "m", "hookpoint_a": "model.layers.15"})
    sae = saelab.create("topk", d_in=D_A, n_latents=8, k=2)
    sae.provenance["hookpoint"] = "model.layers.10"
    with pytest.raises(ConfigError, match="model.layers.10.*model.layers.15"):
        side_of(sae, stitch)
    assert side_of(sae, stitch, allow_hookpoint_mismatch=True) == "a"
