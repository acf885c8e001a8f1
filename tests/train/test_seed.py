"""Seeds: `saelab.create(..., seed=)` gives the same initial weights in any process, and
create + fit with the same seeds gives the same dictionary in two fresh Python processes."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

import saelab

SCRIPT = """
import sys, torch
from safetensors.torch import save_file
import saelab
torch.set_num_threads(1)
torch.rand(int(sys.argv[2]))  # each process has drawn a different amount before (its history)
x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(5))
sae = saelab.create("topk", d_in=16, n_latents=64, k=4, seed=0)
cfg = saelab.TrainConfig(steps=30, batch_size=128, seed=0, progress=False)
saelab.fit(sae, x, cfg)
save_file({k: v.contiguous() for k, v in sae.state_dict().items()}, sys.argv[1])
"""


def test_create_then_fit_in_two_fresh_processes_gives_the_same_weights(tmp_path):
    files = [tmp_path / f"run{i}.safetensors" for i in range(2)]
    for i, file in enumerate(files):
        subprocess.run([sys.executable, "-c", SCRIPT, str(file), str(1 + 100 * i)], check=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                         "PYTHONHASHSEED": str(i)})
    a, b = (load_file(str(f)) for f in files)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    untrained = saelab.create("topk", d_in=16, n_latents=64, k=4, seed=0).state_dict()
    assert not torch.equal(a["W_dec"], untrained["W_dec"])  # it trained


def test_create_with_the_same_seed_gives_the_same_initial_weights():
    torch.manual_seed(1)
    a = saelab.create("topk", d_in=16, n_latents=64, k=4, seed=3).state_dict()
    torch.manual_seed(2)  # the global state does not matter
    b = saelab.create("topk", d_in=16, n_latents=64, k=4, seed=3).state_dict()
    c = saelab.create("topk", d_in=16, n_latents=64, k=4, seed=4).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["W_enc"], c["W_enc"])


def test_create_leaves_the_callers_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    saelab.create("topk", d_in=16, n_latents=64, k=4, seed=0)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(7)
    saelab.create("topk", d_in=16, n_latents=64, k=4, seed=None)  # draws from the caller's
    assert not torch.equal(torch.rand(3), expected)


def test_fit_leaves_the_callers_random_state_alone():
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    saelab.fit(saelab.create("topk", d_in=16, n_latents=32, k=4), x,
               saelab.TrainConfig(steps=3, batch_size=64, progress=False))
    assert torch.equal(torch.rand(3), expected)
