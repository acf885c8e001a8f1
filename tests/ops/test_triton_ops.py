"""The Triton kernels of saelab.ops.triton_sparse agree with float64 references and with the
PyTorch path.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, which must be set
before triton is imported: hence a subprocess). With a GPU, the same checks run on CUDA and a
TopK training step through the kernels is compared with one through PyTorch's embedding_bag.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

CHECKS = textwrap.dedent("""
    import os, sys, torch
    from saelab.ops import sparse, triton_sparse as T
    device = sys.argv[1]
    assert T.available(torch.zeros(1, device=device)), "kernels not used"

    def rel(a, ref):
        return ((a.double() - ref).norm() / ref.norm()).item()

    g = torch.Generator().manual_seed(0)
    # (B, k, n, d): k and d not powers of two, k above the 32-wide block, d above 128,
    # one latent chosen by every row, most latents chosen by none
    for B, k, n, d, dtype in [(37, 5, 50, 70, torch.float32), (20, 40, 300, 200, torch.float32),
                              (64, 8, 1000, 33, torch.bfloat16)]:
        idx = torch.randint(0, n, (B, k), generator=g)
        idx[:, 0] = 3
        w = torch.randn(B, k, generator=g)
        table = torch.randn(n, d, generator=g).to(dtype)
        rows = torch.randn(B, d, generator=g)
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        t64 = table.double()
        on = lambda t: t.to(device)
        ref = (w.double()[:, :, None] * t64[idx]).sum(1)
        out = T.gather_rows(on(idx), on(w), on(table))
        assert out.dtype == dtype and rel(out.cpu(), ref) < tol, ("gather", B, k, n, d)
        ref = (t64[idx] * rows.double()[:, None, :]).sum(-1)
        out = T.row_dots(on(idx), on(table), on(rows))
        assert rel(out.cpu(), ref) < tol, ("row_dots", B, k, n, d)
        ref = torch.zeros(n, d, dtype=torch.float64).index_add_(
            0, idx.reshape(-1), (w.double()[:, :, None] * rows.double()[:, None, :]).reshape(-1, d))
        out = T.scatter_rows(on(idx), on(w), on(rows), n)
        assert rel(out.cpu(), ref) < 1e-6, ("scatter", B, k, n, d)
        untouched = torch.ones(n, dtype=torch.bool)
        untouched[idx.reshape(-1)] = False
        assert untouched.any() and (out.cpu()[untouched] == 0).all(), "unselected latents not 0"
        again = T.scatter_rows(on(idx), on(w), on(rows), n)
        assert torch.equal(out, again), "scatter not deterministic"

    # a whole TopK step through the kernels equals one through the PyTorch path
    import saelab
    from saelab.dictionaries import StepState
    from saelab.train.optim import make_optimizer
    from saelab.train.step import train_step
    x = torch.randn(64, 32, generator=g).to(device)
    results = []
    for use in ("1", "0"):
        os.environ["SAELAB_TRITON"] = use
        torch.manual_seed(0)
        sae = saelab.create("topk", d_in=32, n_latents=256, k=6).to(device)
        opt = make_optimizer(sae.parameters(), 1e-3)
        for step in range(3):
            train_step(sae, opt, x, StepState(step=step, total_steps=3))
        results.append({k: v.detach().cpu() for k, v in sae.state_dict().items()})
    for name in results[0]:
        a, b = results[0][name], results[1][name]
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    print("ok")
""")


def _run(device: str, env: dict) -> None:
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = {**os.environ, **env, "PYTHONPATH": os.path.abspath(src)}
    proc = subprocess.run([sys.executable, "-c", CHECKS, device], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the GPU test checks the "
                    "kernels (Triton before 3.9 cannot interpret them)")
def test_kernels_agree_with_references_under_the_interpreter():
    _run("cpu", {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kernels_agree_with_references_on_the_gpu():
    _run("cuda", {})


def test_cpu_tensors_take_the_pytorch_path_without_importing_triton():
    code = ("import sys, torch; from saelab.ops import sparse, triton_sparse as T; "
            "i = torch.zeros(2, 1, dtype=torch.long); sparse.gather_rows(i, torch.ones(2, 1), "
            "torch.ones(3, 4)); print(T.available(torch.zeros(1)), 'triton' in sys.modules)")
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": src},
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]
