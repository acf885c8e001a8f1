"""Training throughput of a TopK SAE on the CPU: saelab against a plain PyTorch TopK SAE.

Reference workload: d_in 768, 16,384 latents, k 32, batch 4,096, float32, Adam. Every
implementation trains on the same fixed data, and the steps are interleaved (one step of each
implementation in turn, the order rotating every round), so that a machine whose speed drifts
(other jobs, frequency changes) slows all of them alike. Reported: median vectors/s over the
timed steps, the ratio to the plain baseline, and the fraction of the "one-GEMM limit": the
speed if the forward encoder product x @ W_enc^T (timed in the same rotation, by torch.mm and by
saelab's product, the faster counting) were the only work.

    python bench/train_throughput.py            # reference workload, 20 timed steps
    python bench/train_throughput.py --quick    # a small workload, for a smoke test

EleutherAI's sparsify (`pip install --no-deps --target DIR eai-sparsify simple_parsing
docstring_parser einops natsort accelerate`, then PYTHONPATH=DIR) is added as a row when
importable.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import types

import torch
from torch import Tensor, nn

import saelab
from saelab.dictionaries import StepState
from saelab.ops.sparse import linear
from saelab.train.optim import make_optimizer
from saelab.train.step import train_step

REFERENCE = {"d_in": 768, "latents": 16384, "k": 32, "batch": 4096, "steps": 20}
QUICK = {"d_in": 256, "latents": 4096, "k": 32, "batch": 1024, "steps": 10}
WARMUP = 3
LR = 2e-4


# --- the plain baseline ----------------------------------------------------------------------

class PlainTopK(nn.Module):
    """A TopK SAE as one would write it in plain PyTorch: dense codes, dense decoder."""

    def __init__(self, d_in: int, n_latents: int, k: int):
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d_in, n_latents)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())  # [n_latents, d_in]
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def loss(self, x: Tensor) -> Tensor:
        pre = self.encoder(x - self.b_dec)  # [B, n_latents]
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        codes = torch.zeros_like(pre).scatter(1, indices, values.relu())  # dense [B, n_latents]
        x_hat = codes @ self.W_dec + self.b_dec
        return (x_hat - x).pow(2).sum(-1).mean()


def plain_runner(d_in: int, n_latents: int, k: int, device: str = "cpu"):
    model = PlainTopK(d_in, n_latents, k).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(x: Tensor, i: int, total: int) -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x).backward()
        opt.step()

    return step


# --- saelab ----------------------------------------------------------------------------------

def saelab_runner(d_in: int, n_latents: int, k: int, device: str = "cpu",
                  autocast: torch.dtype | None = None):
    model = saelab.create("topk", d_in=d_in, n_latents=n_latents, k=k).to(device)
    opt = make_optimizer(model.parameters(), lr=LR)

    def step(x: Tensor, i: int, total: int) -> None:
        train_step(model, opt, x, StepState(step=i, total_steps=total, dead_mask=None),
                   autocast=autocast)

    return step


def _without_triton(step):
    """`step` run with saelab's Triton kernels switched off (SAELAB_TRITON=0)."""

    def wrapped(x: Tensor, i: int, total: int) -> None:
        os.environ["SAELAB_TRITON"] = "0"
        try:
            step(x, i, total)
        finally:
            os.environ.pop("SAELAB_TRITON")

    return wrapped


# --- the one-GEMM limit ----------------------------------------------------------------------

def gemm_runner(d_in: int, n_latents: int, k: int, device: str = "cpu", product=None):
    """Only the forward encoder product x @ W_enc^T [B, n_latents]: by torch.mm, or by
    `product` (saelab's, which may pick a faster float32 kernel)."""
    W_enc = torch.randn(n_latents, d_in, device=device) / d_in ** 0.5

    def step(x: Tensor, i: int, total: int) -> None:
        torch.mm(x, W_enc.t()) if product is None else product(x, W_enc)

    return step


def autocast_runner(step, device: str):
    """`step` under bf16 autocast."""

    def wrapped(x: Tensor, i: int, total: int) -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            step(x, i, total)

    return wrapped

    return step


# --- EleutherAI sparsify, when importable ----------------------------------------------------

def _import_sparsify():
    """sparsify's SparseCoder and config modules, without its package __init__ (which imports
    the trainer and its dependencies: datasets, ...). None when not installed."""
    if "sparsify" not in sys.modules:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            return None
        pkg = types.ModuleType("sparsify")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = pkg
    return (importlib.import_module("sparsify.sparse_coder"),
            importlib.import_module("sparsify.config"))


def sparsify_runner(d_in: int, n_latents: int, k: int, device: str = "cpu",
                    autocast: bool = True, transcode: bool = False,
                    dead_mask: Tensor | None = None):
    """sparsify's step; on CUDA its forward runs under bf16 autocast (its default), or in
    float32 with `autocast=False` (the undecorated forward). `transcode`: its transcoder (zero
    decoder, no unit-norm rows), trained on step(x, i, total, y) with y the target. `dead_mask`:
    the latents counted dead, so that its AuxK term acts, at weight 1/32 (Gao et al.'s and
    saelab's; sparsify's trainer takes it as `auxk_alpha`, default 0)."""
    if not device.startswith("cuda"):  # its Triton decoder needs a GPU; read at its import
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    coder, config = _import_sparsify()
    sae = coder.SparseCoder(d_in, config.SparseCoderConfig(num_latents=n_latents, k=k,
                                                           transcode=transcode), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    forward = coder.SparseCoder.forward if autocast else coder.SparseCoder.forward.__wrapped__
    unit_norm = not transcode

    def step(x: Tensor, i: int, total: int, y: Tensor | None = None) -> None:
        # as sparsify's Trainer does it
        if unit_norm:
            sae.set_decoder_norm_to_unit_norm()
        out = forward(sae, x, y, dead_mask=dead_mask)
        (out.fvu + out.auxk_loss / 32 if dead_mask is not None else out.fvu).backward()
        if unit_norm:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    return step


# --- data, timing, report --------------------------------------------------------------------

def make_data(n_batches: int, batch: int, d_in: int, seed: int = 0) -> Tensor:
    """[n_batches, batch, d_in]: Gaussian with a decaying spectrum in a random basis and a mean
    offset, like activations (not white noise)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))[0]  # random orthonormal
    scales = 1.0 / torch.arange(1, d_in + 1).sqrt()  # decaying spectrum
    z = torch.randn(n_batches * batch, d_in, generator=g) * scales
    x = z @ basis + 0.5 * torch.randn(d_in, generator=g)
    return x.view(n_batches, batch, d_in).contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(runners: dict, data: Tensor, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each runner: WARMUP untimed rounds, then `steps` timed rounds; one
    step of each runner per round, in an order that rotates every round. On a GPU each step is
    timed from a synchronised start to a synchronised end."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    total = WARMUP + steps
    for r in range(total):
        x = data[r % data.shape[0]]
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(x.device)
            start = time.perf_counter()
            runners[name](x, r, total)
            _sync(x.device)
            elapsed = time.perf_counter() - start
            if r >= WARMUP:
                times[name].append(elapsed)
    return times


def report(times: dict[str, list[float]], batch: int, baseline: str, limits: list[str]) -> None:
    """The table; the one-GEMM limit is the fastest of the `limits` rows."""
    speed = {name: batch / statistics.median(t) for name, t in times.items()}
    limit = max(limits, key=speed.get)
    print(f"{'implementation':<24} {'ms/step':>9} {'vectors/s':>10} {'vs plain':>9} "
          f"{'of 1-GEMM limit':>16}")
    for name, t in times.items():
        print(f"{name:<24} {1e3 * statistics.median(t):>9.1f} {speed[name]:>10.0f} "
              f"{speed[name] / speed[baseline]:>8.2f}x {speed[name] / speed[limit]:>16.2f}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, help="timed steps per implementation (default 20)")
    p.add_argument("--batch", type=int, help="vectors per step (default 4096)")
    p.add_argument("--d-in", type=int, help="input width (default 768)")
    p.add_argument("--latents", type=int, help="number of latents (default 16384)")
    p.add_argument("--k", type=int, help="active latents per vector (default 32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--bf16", action="store_true",
                   help="also time bf16 autocast rows (saelab, sparsify on CUDA, the GEMM)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help=f"small workload: {', '.join(f'{k} {v}' for k, v in QUICK.items())}")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else REFERENCE).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"saelab {saelab.__version__}")
    print(f"TopK SAE: d_in {args.d_in}, {args.latents} latents, k {args.k}, batch {args.batch}, "
          f"float32, Adam; {WARMUP} warm-up + {args.steps} timed steps each, interleaved")
    shape = (args.d_in, args.latents, args.k, args.device)
    if args.device.startswith("cuda"):
        from saelab.ops import triton_sparse
        print(f"device {torch.cuda.get_device_name()}, sparse ops: "
              f"{'Triton kernels' if triton_sparse.available() else 'PyTorch embedding_bag'}")
    cuda = args.device.startswith("cuda")
    runners = {"plain PyTorch": plain_runner(*shape), "saelab": saelab_runner(*shape)}
    if cuda:  # the same step with PyTorch's embedding_bag ops
        runners["saelab, no Triton"] = _without_triton(saelab_runner(*shape))
    else:  # sparsify's Triton decoder is for CUDA tensors
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    if args.bf16:
        runners["saelab bf16"] = saelab_runner(*shape, autocast=torch.bfloat16)
    try:
        if _import_sparsify() is not None:
            kind = "Triton" if cuda else "eager"
            if cuda:  # sparsify autocasts to bf16 on CUDA by default: time both
                runners[f"sparsify ({kind}) fp32"] = sparsify_runner(*shape, autocast=False)
                if args.bf16:
                    runners[f"sparsify ({kind}) bf16"] = sparsify_runner(*shape)
            else:
                runners[f"sparsify ({kind})"] = sparsify_runner(*shape)
        else:
            print("sparsify: not installed, row skipped")
    except Exception as err:  # noqa: BLE001  (an optional row: say why, run the rest)
        print(f"sparsify: not usable ({type(err).__name__}: {err}), row skipped")
    limits = {"x @ W_enc.T, torch.mm": gemm_runner(*shape),
              "x @ W_enc.T, saelab": gemm_runner(*shape, product=linear)}
    runners.update(limits)
    if args.bf16:
        runners["x @ W_enc.T, saelab bf16"] = autocast_runner(
            gemm_runner(*shape, product=linear), args.device)
    data = make_data(4, args.batch, args.d_in).to(args.device)
    times = measure(runners, data, args.steps)
    report({k: v for k, v in times.items() if "bf16" not in k}, args.batch, "plain PyTorch",
           list(limits))
    if args.bf16:
        print("bf16 autocast (float32 weights and optimiser):")
        report({k: v for k, v in times.items() if "bf16" in k or k == "plain PyTorch"},
               args.batch, "plain PyTorch", ["x @ W_enc.T, saelab bf16"])
    print("one-GEMM limit: the faster of the two x @ W_enc.T rows (saelab's picks oneDNN's "
          "float32 product where available)")


if __name__ == "__main__":
    main()
