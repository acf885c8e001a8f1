"""bf16 autocast training (float32 master weights) and the device setting of TrainConfig."""

from __future__ import annotations

import pytest
import torch

import saelab
from saelab.errors import ConfigError
from saelab.ops.sparse import linear, topk_encode


def test_linear_under_cpu_autocast_runs_in_bf16_and_matches_float32():
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(64, 32, generator=g), torch.randn(48, 32, generator=g), torch.randn(48)
    with torch.no_grad():
        ref = linear(x, W, b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x, W, b)
    assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert 0 < rel < 1e-2  # bf16 rounding: close, and not the float32 result


def test_topk_encode_gradients_under_autocast_are_float32_and_close():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 16, generator=g)
    W = torch.randn(64, 16, generator=g).requires_grad_()
    b = torch.zeros(64, requires_grad=True)
    grads = []
    for enabled in (False, True):
        W.grad = b.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            codes = topk_encode(x, W, b, 8)
        codes.values.float().pow(2).sum().backward()
        assert W.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
        grads.append(W.grad.clone())
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()) < 0.05


def test_bf16_training_keeps_float32_weights_and_learns(planted):
    x = planted.x[:4096]
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        sae = saelab.create("topk", d_in=x.shape[1], n_latents=128, k=4)
        saelab.fit(sae, x, saelab.TrainConfig(steps=150, batch_size=256, lr=3e-3,
                                              precision=precision, progress=False))
        assert all(p.dtype == torch.float32 for p in sae.parameters())
        with torch.no_grad():
            out = sae(x)
        results[precision] = ((out.x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert results["bf16"] < 0.5  # it learned (an untrained SAE is near 1)
    assert abs(results["bf16"] - results["fp32"]) < 0.1 * results["fp32"] + 0.02


def test_precision_and_device_are_validated():
    with pytest.raises(ConfigError, match="precision"):
        saelab.TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="device"):
        saelab.TrainConfig(device="tpu")
    assert saelab.TrainConfig(device="cpu").resolve_device(torch.device("cpu")).type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_trains_on_the_gpu_and_the_result_matches_the_cpu(planted):
    x = planted.x[:2048]
    fvus = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        sae = saelab.create("topk", d_in=x.shape[1], n_latents=128, k=4)
        saelab.fit(sae, x, saelab.TrainConfig(steps=100, batch_size=256, device=device,
                                              progress=False))
        assert next(sae.parameters()).device.type == device
        with torch.no_grad():
            out = sae(x.to(device))
        fvus.append(((out.x_hat.cpu() - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item())
    assert abs(fvus[0] - fvus[1]) < 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_cuda_on_a_machine_without_it_is_refused_with_a_message(planted):
    from saelab.errors import ConfigError

    with pytest.raises(ConfigError, match="sees no CUDA GPU; use cpu or auto"):
        saelab.fit(saelab.create("topk", d_in=32, n_latents=64, k=3), planted.x[:512],
                   saelab.TrainConfig(steps=2, batch_size=256, device="cuda", progress=False))
