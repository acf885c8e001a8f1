"""The packaged SmolLM2 and a small random TopK on its layer-15 residual stream."""

from __future__ import annotations

import pytest

HOOKPOINT = "model.layers.15"


@pytest.fixture(scope="package")
def lm():
    from saelab.models import load

    return load("smollm2-135m")


@pytest.fixture(scope="package")
def sae():
    import saelab

    dictionary = saelab.create("topk", d_in=576, n_latents=256, k=8, seed=0)
    dictionary.provenance.update({"model": "smollm2-135m", "hookpoint": HOOKPOINT})
    return dictionary
