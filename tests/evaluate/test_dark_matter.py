"""The `dark_matter` family on dictionaries built by hand whose error is known: a planted linear
function of the input (fully predictable), independent noise (not predictable at all), an error
whose squared norm is linear in the input; the sample bound; a real SAE runs through."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor, nn

import saelab
from saelab.dictionaries import Output
from saelab.evaluate import dark_matter
from tests.conftest import planted_data

D = 16


class PlantedError(nn.Module):
    """A 'dictionary' whose output is x - error(x), so that its error is exactly error(x)."""

    architecture = "planted_error"
    n_latents = 4
    needs = frozenset()

    def __init__(self, error: Callable[[Tensor], Tensor]):
        super().__init__()
        self.d_in = self.d_out = D
        self.error = error

    def forward(self, x: Tensor) -> Output:
        return Output(x - self.error(x), torch.zeros(x.shape[0], self.n_latents))


@pytest.fixture(scope="module")
def x() -> Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(4000, D, generator=g) * 2 + 1


def figures(error: Callable[[Tensor], Tensor], x: Tensor) -> dict:
    report = saelab.evaluate(PlantedError(error), x, metrics=("dark_matter",), seed=0)
    return report["dark_matter"]


def test_an_error_linear_in_the_input_is_predicted_entirely(x):
    a = torch.randn(D, D, generator=torch.Generator().manual_seed(1)) / D ** 0.5
    result = figures(lambda v: v @ a.T + 0.3, x)
    assert result["error_variance_predicted"] > 0.999
    assert result["nonlinear_error_fraction"] < 1e-3
    assert result["sample_rows"] == len(x)


def test_an_error_independent_of_the_input_is_not_predicted(x):
    """Held-out R^2 of pure noise: about 0 (a little below from fitting noise; the tolerance is
    several times D / rows fitted)."""
    noise = torch.Generator().manual_seed(99)  # not torch's global RNG, which evaluate seeds
    result = figures(lambda v: torch.randn(v.shape, generator=noise), x)
    assert abs(result["error_variance_predicted"]) < 0.03
    assert abs(result["error_norm_predicted"]) < 0.03
    assert result["nonlinear_error_fraction"] > 0.97


def test_an_error_whose_squared_norm_is_linear_in_the_input_has_its_norm_predicted(x):
    """||e||^2 = w.x + c exactly (e = sqrt(w.x + c) u for a unit u), while e itself is not
    linear in x: the norm prediction is exact, the vector prediction is not."""
    g = torch.Generator().manual_seed(2)
    w, u = torch.randn(D, generator=g), nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    assert float((x @ w).min()) > -40
    result = figures(lambda v: (v @ w + 40).sqrt()[:, None] * u, x)
    assert result["error_norm_predicted"] > 0.999
    assert result["error_variance_predicted"] < result["error_norm_predicted"]
    linear = figures(lambda v: v @ torch.eye(D) * 0.1, x)
    assert linear["error_norm_predicted"] < 0.5  # ||0.1 x||^2 is quadratic in x


def test_the_sample_is_bounded(x, monkeypatch):
    monkeypatch.setattr(dark_matter, "MAX_ROWS", 1000)
    result = figures(lambda v: 0.1 * v, x)
    assert result["sample_rows"] == 1000


def test_a_trained_sae_leaves_a_partly_predictable_error():
    data = planted_data(n=6000, d=D, n_atoms=64, active=3, noise=0.05)
    sae = saelab.create("topk", d_in=D, n_latents=64, k=2, seed=0)
    saelab.fit(sae, data.x, saelab.TrainConfig(steps=150, batch_size=256, lr=3e-3, seed=0,
                                               progress=False))
    result = saelab.evaluate(sae, data.x, metrics=("dark_matter",), seed=0)["dark_matter"]
    assert 0 < result["error_variance_predicted"] < 1
    assert 0 < result["nonlinear_error_fraction"] < 1


def test_dead_latents_give_finite_figures_and_a_nan_row_is_refused_by_number(x):
    sae = saelab.create("topk", d_in=D, n_latents=32, k=2, seed=0)
    with torch.no_grad():
        sae.b_enc[:16] = -1e6  # half the latents never fire
    result = saelab.evaluate(sae, x, metrics=("dark_matter",), seed=0)["dark_matter"]
    assert all(v == v for v in result.values())  # no NaN
    bad = x[:500].clone()
    bad[321, 0] = float("inf")
    with pytest.raises(saelab.errors.DataError, match="row 321"):
        saelab.evaluate(sae, bad, metrics=("dark_matter",))
