"""AFA evaluation: are a dictionary's codes as large as the input says they should be? (Lee,
Davies, Canby and Hockenmaier 2025, "Evaluating and Designing Sparse Autoencoders by
Approximating Quasi-Orthogonality").

For a dictionary with (nearly) orthogonal unit atoms, the norm of the code f of an input should
be close to the norm of z = x - b_dec, the part of the input the atoms explain (the approximate
feature activation; bounds in saelab.ops.afa). This family measures, on held-out inputs:

- `afa_ratio_*`: ||f|| / ||z|| (f = codes times decoder-row norms): its mean, median, 10th and
  90th percentiles. 1 is what the AFA predicts; above 1 the codes are over-activated, below
  under-activated (the paper's ZF plot shows the same pairs of norms);
- `afa_over` / `afa_under`: the fraction of inputs whose ||f|| lies above / below the bracket
  the AFA allows for that input's L0 and the decoder's coherence eps (its largest |cosine|
  between two atoms), so an input counts only when no eps-quasi-orthogonal combination of that
  many atoms could explain it;
- `decoder_coherence`: eps;
- `epsilon_lbo_mean` / `epsilon_lbo_max`: per input, the smallest eps consistent with what the
  decoder did, |(||x_hat - b_dec||^2 - ||f||^2)| / sum_{i != j} |f_i f_j| (the paper's lower
  bound of quasi-orthogonality, here computed on the decoder output); at most eps by
  construction, and far below it when the atoms an input uses are more orthogonal than the
  worst pair.

Use it with `saelab.evaluate(sae, data, metrics=("reconstruction", "sparsity", "afa"))`
(`saelab eval --metrics reconstruction sparsity afa`), where the figures are under
`report["afa"]`, or `afa_report(dictionary, data)`, which returns them alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saelab.evaluate._base import Batch, Context, Family
from saelab.evaluate._registry import register
from saelab.ops.afa import afa_bounds, coherence, epsilon_lower_bound


@register("afa")
class AFA(Family):
    """Are the codes as large as the input says they should be? The approximate feature
    activation check of Lee, Davies, Canby and Hockenmaier (2025), streamed over the activations.

    - `afa_ratio_mean`, `afa_ratio_median`, `afa_ratio_p10`, `afa_ratio_p90`: ||f|| / ||z||, with
      f the codes in units of unit atoms and z = x - b_dec; 1 is what the AFA predicts;
    - `afa_over`, `afa_under`: fraction of inputs whose ||f|| lies above / below the bracket the
      AFA allows for their L0 and the decoder's coherence;
    - `decoder_coherence`: largest |cosine| between two atoms (eps);
    - `epsilon_lbo_mean`, `epsilon_lbo_max`: the paper's lower bound of quasi-orthogonality, per
      input, computed on the decoder output.
    """

    needs = frozenset({"activations"})
    figures = ("afa_ratio_mean", "afa_ratio_median", "afa_ratio_p10", "afa_ratio_p90",
               "afa_over", "afa_under", "decoder_coherence", "epsilon_lbo_mean",
               "epsilon_lbo_max")
    headline = ("afa_ratio_median", "afa_over", "afa_under")

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        dictionary = context.dictionary
        self.b_dec = dictionary.b_dec.detach()
        self.dec_norms = dictionary.W_dec.detach().norm(dim=-1)  # [n_latents]
        self.centred = dictionary.d_in == dictionary.d_out
        self.eps = coherence(dictionary.W_dec.detach())
        self.ratios: list[Tensor] = []
        self.eps_lbo: list[Tensor] = []
        self.over = self.under = self.n = 0

    @torch.no_grad()
    def update(self, x: Tensor, target: Tensor, output: NamedTuple) -> None:
        codes = output.codes
        z = x - self.b_dec if self.centred else x
        f = codes * self.dec_norms  # [B, n]: codes in units of unit atoms
        f_norm, z_norm = f.norm(dim=-1), z.norm(dim=-1)
        self.ratios.append((f_norm / z_norm.clamp_min(1e-12)).cpu())
        lower, upper = afa_bounds(z_norm, self.eps, (codes != 0).sum(-1))
        tol = 1e-5 * z_norm  # float rounding is not over- or under-activation
        self.over += int((f_norm > upper + tol).sum())
        self.under += int((f_norm < lower - tol).sum())
        self.n += x.shape[0]
        x_hat_norm = (output.x_hat - self.b_dec).norm(dim=-1)
        self.eps_lbo.append(epsilon_lower_bound(x_hat_norm, f).cpu())

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return dict.fromkeys(self.figures, float("nan"))
        r = torch.cat(self.ratios).double()
        e = torch.cat(self.eps_lbo).double()
        q = torch.quantile(r, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
        return {"afa_ratio_mean": float(r.mean()), "afa_ratio_median": float(q[1]),
                "afa_ratio_p10": float(q[0]), "afa_ratio_p90": float(q[2]),
                "afa_over": self.over / self.n, "afa_under": self.under / self.n,
                "decoder_coherence": self.eps, "epsilon_lbo_mean": float(e.mean()),
                "epsilon_lbo_max": float(e.max())}


@torch.no_grad()
def afa_report(dictionary, data: Tensor, batch_size: int = 4096) -> dict[str, float]:
    """AFA figures of `dictionary` on activations `data` [N, d_in] (eval mode)."""
    dictionary.eval()

    def batches():
        return (Batch(x, x) for x in data.float().split(batch_size))

    return AFA(Context(dictionary, batches)).run()
