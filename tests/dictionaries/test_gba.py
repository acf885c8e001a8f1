"""GBA: encoder biases adapted (not trained) towards per-group target activation frequencies."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.data.synthetic import recovery
from saelab.dictionaries import StepState
from saelab.errors import ConfigError


def test_groups_get_geometric_targets_in_contiguous_blocks():
    sae = saelab.create("gba", d_in=8, n_latents=12, n_groups=3, max_freq=0.1, min_freq=0.001)
    assert torch.allclose(sae.group_targets(), torch.tensor([0.1, 0.01, 0.001]))
    assert sae.groups().tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.allclose(sae.targets()[[0, 4, 8]], torch.tensor([0.1, 0.01, 0.001]))


def test_bias_is_not_trained_by_gradient():
    sae = saelab.create("gba", d_in=8, n_latents=16)
    assert "b_enc" not in dict(sae.named_parameters())
    assert "b_enc" in sae.state_dict()


def test_adaptation_lowers_frequent_raises_silent_and_keeps_the_band():
    torch.manual_seed(0)
    sae = saelab.create("gba", d_in=8, n_latents=3, n_groups=1, max_freq=0.5, min_freq=0.5,
                        lower_rate=0.5, raise_rate=0.5)
    # pre-activations of one window: latent 0 always fires (max 2), latent 1 never (max -4),
    # latent 2 fires on one row of four (within its target 0.5)
    sae.window_fires.copy_(torch.tensor([4, 0, 1]))
    sae.window_max.copy_(torch.tensor([2.0, -4.0, 1.0]))
    sae.window_rows.fill_(4)
    sae.b_enc.copy_(torch.tensor([-1.0, -6.0, -0.5]))
    sae.adapt_biases()
    assert torch.allclose(sae.b_enc, torch.tensor([-2.0, -4.0, -0.5]))
    assert sae.window_rows == 0 and (sae.window_fires == 0).all()


def test_biases_update_once_per_step_and_only_in_training():
    torch.manual_seed(0)
    sae = saelab.create("gba", d_in=8, n_latents=16, max_freq=0.01, min_freq=0.01)
    x = torch.randn(64, 8)
    sae.loss(x, StepState(step=0))
    assert (sae.b_enc == 0).all()  # nothing recorded before step 0: no update
    sae.loss(x, StepState(step=1))
    once = sae.b_enc.clone()
    assert (once < 0).any()  # everything fired far above 1%: biases went down
    sae.loss(x, StepState(step=1))
    assert torch.equal(sae.b_enc, once)  # the same step again: no second update
    sae.eval()
    sae.loss(x, StepState(step=2))
    assert torch.equal(sae.b_enc, once)


@pytest.fixture(scope="module")
def trained(request):
    from tests.conftest import planted_data

    data = planted_data()  # 128 directions in 32 dims, each firing on ~2.3% of rows
    torch.manual_seed(0)
    sae = saelab.create("gba", d_in=32, n_latents=256, n_groups=2, max_freq=0.01,
                        min_freq=0.005)
    sae = saelab.fit(sae, data.x[:16_000], saelab.TrainConfig(steps=1500, batch_size=512,
                                                              seed=0, progress=False))
    return sae, data


def test_each_group_stays_near_its_target_frequency(trained):
    sae, data = trained
    freq = (sae.encode(data.x[16_000:]) > 0).float().mean(0)  # [n_latents], held-out rows
    groups = sae.groups()
    for g, target in enumerate(sae.group_targets().tolist()):
        f = freq[groups == g]
        # targets are below every planted direction's frequency, so latents sit at the target:
        # none far above it (the rule lowers those), and the group's mean close to it
        assert f.max() < 2 * target, (g, f.max(), target)
        assert 0.5 * target < f.mean() < 1.2 * target, (g, f.mean(), target)


def test_gba_recovers_the_planted_directions(trained):
    sae, data = trained
    mean_cos, fraction = recovery(data.atoms, sae.W_dec.detach())
    assert fraction > 0.8, (mean_cos, fraction)


def test_bad_fields_are_config_errors_naming_them():
    for field, value in [("n_groups", 0), ("max_freq", 1.5), ("min_freq", 0.05),
                         ("update_every", 0), ("lower_rate", 0.0), ("raise_rate", 2.0),
                         ("tied", "no")]:
        with pytest.raises(ConfigError, match=field):
            saelab.create("gba", d_in=8, n_latents=16, **{field: value})
    with pytest.raises(ConfigError, match="tied"):
        saelab.create("gba", d_in=8, n_latents=16, d_out=4)
