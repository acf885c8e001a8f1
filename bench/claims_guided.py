"""G-SAE ("Measuring and Guiding Monosemanticity", 2025): guided latents detect their labelled
concepts better than any latent of a TopK SAE trained on the same activations.

Planted data: 3 of 128 unit atoms per row in d=64; concept c = "any atom of group c (4 atoms)
is active", a topic spread over several directions. Detection is the ROC AUC of one latent's
score (its encoder output before the sparsity: the guided latent's sigmoid, the TopK latent's
pre-activation; and the TopK latent's code) on held-out rows, per concept, averaged.
"""

from __future__ import annotations

import torch

import saelab
from saelab.dictionaries.guided import detection_auc
from saelab.train.data import Labelled

D, N_ATOMS, GROUP = 64, 128, 4


def _planted(n: int, n_concepts: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(N_ATOMS, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(N_ATOMS, generator=g)[:3] for _ in range(n)])
    codes = torch.zeros(n, N_ATOMS).scatter_(1, idx, torch.rand(n, 3, generator=g) + 0.5)
    labels = torch.stack([(codes[:, GROUP * c:GROUP * (c + 1)] > 0).any(1)
                          for c in range(n_concepts)], 1).float()
    return codes @ atoms, labels


def guided_detection(args) -> list[dict]:
    n, steps, n_concepts, n_latents, k = ((8000, 600, 4, 64, 4) if args.quick
                                          else (40000, 3000, 8, 256, 4))
    x, y = _planted(n, n_concepts, args.seed)
    cut = n * 3 // 4
    cfg = saelab.TrainConfig(steps=steps, batch_size=256, lr=4e-3, progress=False, seed=args.seed)
    torch.manual_seed(args.seed)
    guided = saelab.fit(saelab.create("guided", d_in=D, n_latents=n_latents, k=k,
                                      n_guided=n_concepts), Labelled(x[:cut], y[:cut]), cfg)
    torch.manual_seed(args.seed)
    topk = saelab.fit(saelab.create("topk", d_in=D, n_latents=n_latents, k=k), x[:cut], cfg)
    xt, yt = x[cut:], y[cut:]
    rows = []
    with torch.no_grad():
        for name, sae in (("guided", guided), ("topk", topk)):
            z = sae.encode(xt)
            fvu = float((sae.decode(z) - xt).pow(2).sum() / (xt - xt.mean(0)).pow(2).sum())
            l0 = float((z != 0).sum(1).float().mean())
            if name == "guided":
                s = sae.concept_scores(xt)
                score = [detection_auc(s[:, c:c + 1], yt[:, c]).item() for c in range(n_concepts)]
                code = [detection_auc(z[:, c:c + 1], yt[:, c]).item() for c in range(n_concepts)]
            else:
                pre = sae.pre_activations(xt)
                score = [detection_auc(pre, yt[:, c]).max().item() for c in range(n_concepts)]
                code = [detection_auc(z, yt[:, c]).max().item() for c in range(n_concepts)]
            rows.append({"data": "planted", "method": f"{name} k={k}", "l0": round(l0, 2),
                         "fvu": round(fvu, 4), "score_auc": round(sum(score) / n_concepts, 3),
                         "code_auc": round(sum(code) / n_concepts, 3),
                         "which": "its own guided latent" if name == "guided"
                         else "best of all latents, per concept"})
    g, t = rows
    holds = g["score_auc"] > t["score_auc"] + 0.05
    g["verdict"] = ("holds" if holds else "does not hold") + (
        f": guided score AUC {g['score_auc']} vs best TopK latent {t['score_auc']}")
    t["verdict"] = "baseline"
    return rows


CLAIMS = {"guided_detection": guided_detection}
