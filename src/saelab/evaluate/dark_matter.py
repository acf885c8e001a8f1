"""Dark matter: how much of a dictionary's error is a linear function of its input (Engels, Smith
and Tegmark 2024, "Decomposing the Dark Matter of Sparse Autoencoders"; TMLR 2025; the arXiv
version names the second author Logan Riggs).

The paper finds that about half of an SAE's error vector, and over 90% of its norm, can be
predicted from the activation by a linear map: the error is not all structure the dictionary has
not learned yet, some of it is a linear function of the input, and what is left (the nonlinear
error) stays about constant as the SAE grows wider in their scaling runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import RidgeCV
from torch import Tensor

from saelab.evaluate._base import Context, Family
from saelab.evaluate._registry import register
from saelab.evaluate._sample import RowSample

MAX_ROWS = 16_384
"""Rows of the activation stream kept (a uniform random sample, by reservoir) with their errors:
the first half (in random order) fits the regressions, the second half scores them. Memory:
MAX_ROWS x (d_in + d_out) float32 values (75 MiB at width 576, 300 MiB at 2304)."""
MIN_ROWS = 8
"""Fewer rows than this give NaN figures (too few to fit on half and score on the other)."""
RELATIVE_ALPHAS = (1e-6, 1e-4, 1e-2, 1e-1, 1.0)
"""Ridge penalties tried, in units of the mean eigenvalue of the centred X^T X of the fitting
half (so the choice does not depend on the activations' scale); the one with the smallest
leave-one-out error on the fitting half is used."""


class Prediction(NamedTuple):
    """A linear prediction fitted on one half of the rows and applied to the other."""

    truth: np.ndarray
    """Held-out targets [n, k] (float64)."""
    predicted: np.ndarray
    """Their prediction from the held-out inputs [n, k] (float64)."""


def predict_held_out(x: Tensor, y: Tensor) -> Prediction:
    """Ridge regression (with intercept) of y [m, k] on x [m, d] fitted on the first half of the
    rows, its penalty chosen among RELATIVE_ALPHAS by leave-one-out error on that half; returns
    the second half's targets and predictions."""
    x_np, y_np = x.double().cpu().numpy(), y.double().cpu().numpy()
    half = len(x_np) // 2
    x_fit = x_np[:half]
    scale = float(((x_fit - x_fit.mean(0)) ** 2).sum()) / x_fit.shape[1]
    alphas = [a * max(scale, 1e-12) for a in RELATIVE_ALPHAS]
    ridge = RidgeCV(alphas=alphas).fit(x_fit, y_np[:half])
    return Prediction(y_np[half:], ridge.predict(x_np[half:]).reshape(y_np[half:].shape))


def r_squared(p: Prediction) -> float:
    """1 - (summed squared error) / (summed squared deviation of the truth from its mean): the
    share of the held-out targets' total variance the prediction explains; NaN for constant
    targets."""
    total = float(((p.truth - p.truth.mean(0)) ** 2).sum())
    residual = float(((p.truth - p.predicted) ** 2).sum())
    return 1 - residual / total if total > 0 else math.nan


@register("dark_matter")
class DarkMatter(Family):
    """How much of the dictionary's error is linearly predictable from its input (Engels et al.
    2024): ridge regressions from the input x to the error e = target - x_hat (the input itself
    for an SAE), fitted on one half of a sample of rows and scored on the other half.

    Figures (under `report["dark_matter"]`):

    - `error_variance_predicted`: the share of the held-out error vectors' total variance that
      the linear prediction from x explains (R^2 summed over dimensions); near 1 when the error
      is a linear function of the input, near 0 when it is independent of it;
    - `error_norm_predicted`: held-out R^2 of a linear prediction of the error's squared norm
      ||e||^2 from x (the paper's per-token norm prediction);
    - `nonlinear_error_fraction`: the held-out share of the error's squared norm that the linear
      prediction leaves, sum ||e - e_lin||^2 / sum ||e||^2 (the paper's "nonlinear error";
      1 minus it is the linearly predictable share, intercept included). Times the dictionary's
      FVU (`reconstruction`), it is about the nonlinear error in FVU units (the paper's scale);
    - `sample_rows`: the rows sampled (half fit, half scored).

    From Python: `saelab.evaluate(sae, data, metrics=("dark_matter",))`; from the command line:
    `saelab eval DICTIONARY STORE --metrics dark_matter`.

    Sample: a uniform random sample of at most `MAX_ROWS` = 16384 rows (reservoir sampling
    during the shared pass, seeded by `evaluate`'s `seed`), split in half at random.

    Reference code: `run_lstsq` and `calculate_r_squared` in utils.py and their use in
    sae_power_laws.py of github.com/JoshEngels/SAE-Dark-Matter. Departures: the paper fits
    least squares (without an intercept in its scaling runs) on 150k tokens and scores the next
    150k; saelab fits scikit-learn's ridge regression with an intercept (penalty chosen by
    leave-one-out on the fitting half) on a bounded sample, so that it stays cheap and stable
    when the input has nearly as many dimensions as the fitting half has rows. The paper's error-vector R^2 is
    the mean of the per-dimension R^2 (which a comment in their code calls a makeshift); here it
    is the share of the total variance (dimensions weighted by their variance), so that
    dimensions where the error hardly varies do not weigh as much as those carrying most of it.
    For a transcoder the same regressions predict its error at the target from its input.
    """

    needs = frozenset({"activations"})
    figures = ("error_variance_predicted", "error_norm_predicted", "nonlinear_error_fraction",
               "sample_rows")
    headline = ("error_variance_predicted", "error_norm_predicted", "nonlinear_error_fraction")

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.sample = RowSample(MAX_ROWS)

    def update(self, x: Tensor, target: Tensor, output: NamedTuple) -> None:
        self.sample.add(x.float(), (target - output.x_hat).float())

    def result(self) -> dict[str, float]:
        out = dict.fromkeys(self.figures, math.nan)
        out["sample_rows"] = len(self.sample)
        if len(self.sample) < MIN_ROWS:
            return out
        x, error = self.sample.columns()
        vector = predict_held_out(x, error)
        norm = predict_held_out(x, error.double().pow(2).sum(-1, keepdim=True))
        error_sq = float((vector.truth ** 2).sum())
        left = float(((vector.truth - vector.predicted) ** 2).sum())
        out.update(error_variance_predicted=r_squared(vector), error_norm_predicted=r_squared(norm),
                   nonlinear_error_fraction=left / error_sq if error_sq > 0 else math.nan)
        return out
