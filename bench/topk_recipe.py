"""Which part of the TopK recipe decides planted recovery: saelab's (Gao et al.) or SAELens'?

bench/recovery.py finds saelab's TopK ahead of SAELens' on the flat planted set and behind it
on the parent/child set. The two libraries train TopK with different recipes; this benchmark
trains saelab's TopK inside saelab's own loop with each part of SAELens' recipe switched on
alone and together, on the data, batches and budget of bench/recovery.py, so the difference can
be pinned on one part:

- decoder norms: `unit` (saelab, Gao et al.: rows kept at unit norm, the gradient along them
  removed) or `free` (SAELens' `rescale_acts_by_decoder_norm`: rows free, selection on the
  pre-activations times the row norms, decoding through the normalised rows);
- AuxK: `gao` (saelab: ReLU on the dead latents' top codes, as in Gao et al.'s reference code,
  the error divided by the residual's variance, weight 1/32) or `saelens` (no ReLU on those
  codes, the unnormalised error, weight 1 times min(dead / k_aux, 1)).

    python bench/topk_recipe.py                       # both sets, the four recipes, seed 0
    python bench/topk_recipe.py --datasets tree --recipes unit/gao free/saelens --inits 0 1

Before training, the unit/gao recipe is checked to give the loss and gradients of saelab's own
TopK on one batch. Free-norm runs are folded back to unit rows after training (encoder rows and biases times the
norms), so every row is evaluated as an ordinary saelab TopK.
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch
from recovery import DEAD_TOKENS, LR, STEPS, TARGET_L0, pair_recovery
from torch import Tensor

import saelab
from saelab.data.synthetic import planted, recovery
from saelab.dictionaries._base import Loss, StepState, fvu, squared_error
from saelab.dictionaries.topk import TopK
from saelab.ops import sparse_decode
from saelab.ops.auxk import auxk_loss
from saelab.evaluate import figures

RECIPES = ("unit/gao", "free/gao", "unit/saelens", "free/saelens")


def saelens_auxk(xc: Tensor, residual: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor,
                 dead_mask: Tensor, k_aux: int) -> Tensor:
    """SAELens' TopK auxiliary loss: the top k_aux dead pre-activations, not rectified, decode
    the residual; squared error unnormalised, scaled down while few latents are dead."""
    dead = dead_mask.nonzero().squeeze(1)
    values, indices = (xc @ W_enc[dead].t() + b_enc[dead]).topk(min(k_aux, dead.numel()), dim=-1)
    e_hat = sparse_decode(values, indices, W_dec[dead])
    return min(dead.numel() / k_aux, 1.0) * (e_hat - residual.detach()).pow(2).sum(-1).mean()


class RecipeTopK(TopK):
    """saelab's TopK with the decoder-norm handling and AuxK form of `recipe`."""

    def __init__(self, cfg, recipe: str):
        super().__init__(cfg)
        self.norms, self.auxk = recipe.split("/")

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.norms == "unit"

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        target = x if target is None else target
        xc = self.centered(x)
        n = self.W_dec.norm(dim=1) if self.norms == "free" else torch.ones_like(self.b_enc)
        W_enc, b_enc, W_dec = self.W_enc * n[:, None], self.b_enc * n, self.W_dec / n[:, None]
        values, indices = (xc @ W_enc.t() + b_enc).topk(self.cfg.k, dim=-1)
        values = values.relu()
        x_hat = sparse_decode(values, indices, W_dec) + self.b_dec
        mse = squared_error(x_hat, target).mean()
        terms, total = {"mse": mse}, mse
        if state.dead_mask is not None and state.dead_mask.any():
            k_aux = self.cfg.auxk_k or self.d_in // 2
            residual = target - x_hat.detach()
            if self.auxk == "gao":
                terms["auxk"] = auxk_loss(xc, residual, W_enc, b_enc, W_dec, state.dead_mask,
                                          k_aux)
                total = total + self.cfg.auxk_coeff * terms["auxk"]
            else:
                terms["auxk"] = saelens_auxk(xc, residual, W_enc, b_enc, W_dec, state.dead_mask,
                                             k_aux)
                total = total + terms["auxk"]
        fired = values > 0
        active = torch.bincount(indices.reshape(-1), weights=fired.reshape(-1).float(),
                                minlength=self.n_latents) > 0
        return Loss(total, terms, {"fvu": fvu(x_hat.detach(), target).item(),
                                   "l0": fired.sum(-1).float().mean().item()}, active)

    @torch.no_grad()
    def fold_norms(self) -> None:
        n = self.W_dec.norm(dim=1)
        self.W_enc.mul_(n[:, None])
        self.b_enc.mul_(n)
        self.W_dec.div_(n[:, None])


def check_baseline() -> None:
    """The unit/gao recipe is saelab's TopK: same loss and gradients on a batch with dead latents
    (this file's dense forward against the library's sparse one)."""
    torch.manual_seed(0)
    ours = saelab.create("topk", d_in=32, n_latents=256, k=TARGET_L0)
    recipe = RecipeTopK(ours.cfg, "unit/gao")
    recipe.load_state_dict(ours.state_dict())
    x = torch.randn(512, 32)
    state = StepState(step=0, total_steps=1, dead_mask=torch.arange(256) < 64)
    a, b = ours.loss(x, state), recipe.loss(x, state)
    a.total.backward()
    b.total.backward()
    torch.testing.assert_close(b.total, a.total)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(dict(recipe.named_parameters())[name].grad, p.grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["flat", "tree"], choices=["flat", "tree"])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--inits", nargs="+", type=int, default=[0],
                   help="initialisation seeds (the data and batches stay those of seed 0)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--rows", type=int, default=200_000)
    args = p.parse_args()
    print(f"date {datetime.datetime.now().isoformat(timespec='seconds')}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, saelab {saelab.__version__}")
    check_baseline()
    sets = {"flat": dict(mean_active=TARGET_L0, seed=0),
            "tree": dict(mean_active=4, n_parents=32, children_per_parent=3, seed=1)}
    print(f"TopK k={TARGET_L0}, 1024 latents, {args.steps} steps x 1024 at lr {LR}, dead after "
          f"{DEAD_TOKENS:,} vectors (as bench/recovery.py)")
    print(f"{'set':<6}{'recipe':<15}{'init':>5}{'recovered':>11}{'pairs':>8}{'FVU':>8}{'L0':>7}"
          f"{'dead':>7}{'time s':>8}")
    for name in args.datasets:
        data = planted(n=args.rows, d=64, n_atoms=512, noise=0.01, **sets[name])
        split = int(0.9 * data.x.shape[0])
        train, held = data.x[:split], data.x[split:]
        for recipe in args.recipes:
            for init in args.inits:
                torch.manual_seed(init)
                base = saelab.create("topk", d_in=64, n_latents=1024, k=TARGET_L0)
                sae = RecipeTopK(base.cfg, recipe)
                sae.load_state_dict(base.state_dict())
                t = time.time()
                sae = saelab.fit(sae, train, saelab.TrainConfig(
                    steps=args.steps, batch_size=1024, lr=LR, seed=0, progress=False,
                    dead_after_tokens=DEAD_TOKENS))
                seconds = time.time() - t
                sae.fold_norms()
                r = figures(saelab.evaluate(sae, held, batch_size=4096))
                W = sae.W_dec.detach()
                print(f"{name:<6}{recipe:<15}{init:>5}{recovery(data.atoms, W)[1]:>11.3f}"
                      f"{pair_recovery(data.atoms, data.parents, W):>8.3f}{r['fvu']:>8.3f}"
                      f"{r['l0']:>7.2f}{r['dead_fraction']:>7.3f}{seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
