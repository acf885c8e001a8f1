"""TrainConfig(compile=True): the loss runs through torch.compile and training reaches the same
weights as eager training."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import saelab


def _train(name: str, x: torch.Tensor, compile: bool):
    torch.manual_seed(0)
    sae = saelab.create(name, d_in=x.shape[1], n_latents=64,
                        **({"k": 4} if name == "topk" else {}))
    cfg = saelab.TrainConfig(steps=8, batch_size=128, lr=1e-3, warmup_steps=0, progress=False,
                             compile=compile)
    return saelab.fit(sae, x, cfg)


@pytest.mark.parametrize("name", ["relu", "topk"])
def test_compiled_training_reaches_the_eager_weights(name):
    x = torch.randn(1024, 16, generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    counters.clear()
    eager = _train(name, x, compile=False)
    assert counters["stats"]["unique_graphs"] == 0
    compiled = _train(name, x, compile=True)
    assert counters["stats"]["unique_graphs"] > 0  # the loss went through dynamo
    for (key, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), key

