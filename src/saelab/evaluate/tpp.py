"""Targeted probe perturbation (TPP): do the latents of one concept carry that concept alone?
(Karvonen et al. 2025, "SAEBench: A Comprehensive Benchmark for Sparse Autoencoders in Language
Model Interpretability", building on the SHIFT and TPP evaluations of Karvonen et al. 2024,
"Evaluating Sparse Autoencoders on Targeted Concept Erasure Tasks").

A linear probe is fitted on the raw activations for each class of labelled texts
(one-vs-rest). For class i, the n latents with the largest effect on probe i are zero-ablated
(the activation becomes x - sum over those latents of code x decoder direction, the
dictionary's error kept), and the accuracy of every probe is measured again. A dictionary whose
latents separate the concepts lowers the accuracy of probe i a lot and the others' little.

Reference code: `get_effects_per_class_precomputed_acts`, `select_top_n_features`,
`ablated_precomputed_activations`, `perform_feature_ablations` and `create_tpp_plotting_dict` in
`sae_bench/evals/scr_and_tpp/main.py` (github.com/adamkarvonen/SAEBench; `perform_scr=False`).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from saelab.errors import ConfigError
from saelab.evaluate._base import Context
from saelab.evaluate._pooled import ConceptFamily
from saelab.evaluate._probe import (ProbeSet, accuracy, fit_probe, one_vs_rest, raw_weight,
                                    stratified_split)
from saelab.evaluate._registry import register

THRESHOLDS = (2, 5, 10, 20, 50, 100, 500)
"""Numbers of latents ablated per class (SAEBench's `n_values`)."""
HEADLINE_THRESHOLD = 20
"""The threshold whose figures `format_report` prints."""
DIRECTIONS_PER_DECODE = 1024
"""Latents decoded at once when reading the decoder directions."""


@torch.no_grad()
def decoder_directions(dictionary) -> Tensor:
    """What each latent adds to the output per unit of code [n_latents, d_out]:
    decode(e_j) - decode(0) for each latent j. Exact for a decoder affine in its codes (every
    dictionary with codes @ W_dec + b_dec, whitened PCA included); a dictionary with a per-input
    normalisation (SAELens' input_norm) has no input-free decode, and its W_dec rows are used."""
    if getattr(getattr(dictionary, "cfg", None), "input_norm", "none") != "none":
        return dictionary.W_dec.detach().float().cpu()
    n = dictionary.n_latents
    param = next(dictionary.parameters(), torch.empty(0))
    zero = dictionary.decode(torch.zeros(1, n, device=param.device)).float()
    rows = []
    for start in range(0, n, DIRECTIONS_PER_DECODE):
        eye = torch.eye(n, device=param.device)[start:start + DIRECTIONS_PER_DECODE]
        rows.append((dictionary.decode(eye).float() - zero).cpu())
    return torch.cat(rows)


def latent_effects(codes: Tensor, y: Tensor, weight: Tensor, directions: Tensor) -> Tensor:
    """Effect of each latent on a probe [F] (SAEBench's `get_effects_per_class_precomputed_acts`
    for TPP): max(0, mean code over y == 1 - mean code over y == 0) x (probe weight . decoder
    direction), from pooled codes [M, F], labels y [M], the probe's weight [D] and the
    directions [F, D]."""
    diff = (codes[y == 1].mean(0) - codes[y == 0].mean(0)).clamp_min(0)
    return diff * (directions @ weight)


def select_latents(effects: Tensor, n: int) -> Tensor:
    """Indices of the n largest effects, among the non-zero ones only (fewer when fewer are
    non-zero; SAEBench's `select_top_n_features`)."""
    k = min(n, int((effects != 0).sum()))
    return torch.topk(effects, k).indices if k else torch.zeros(0, dtype=torch.long)


def ablate(raw: Tensor, codes: Tensor, directions: Tensor, latents: Tensor) -> Tensor:
    """The pooled activation with `latents` zero-ablated and the error kept [N, D]:
    raw - codes[:, latents] @ directions[latents]. For a decoder affine in its codes this equals
    SAEBench's `ablated_precomputed_activations` (decode the ablated codes, add the error,
    average over tokens), because averaging commutes with the affine decoder."""
    return raw - codes[:, latents] @ directions[latents]


def tpp_figures(clean: Tensor, ablated: Tensor, thresholds: Sequence[int]) -> dict[str, float]:
    """SAEBench's TPP figures (`create_tpp_plotting_dict`) from the probes' clean accuracy
    [C] and their accuracy after ablating class i's latents, ablated [T, C (ablated i), C
    (probe j)], for each threshold: intended drop = clean[i] - ablated[t, i, i]; unintended
    drop = mean over j != i of clean[j] - ablated[t, i, j]; total = intended - unintended;
    each averaged over classes i. A threshold whose row is NaN gives NaN figures."""
    drop = clean[None, None, :] - ablated  # [T, C, C]
    n = clean.shape[0]
    intended = drop.diagonal(dim1=1, dim2=2)  # [T, C]
    unintended = (drop.sum(2) - intended) / (n - 1)
    out = {}
    for t, threshold in enumerate(thresholds):
        prefix = f"tpp_threshold_{threshold}"
        out[f"{prefix}_total_metric"] = float((intended[t] - unintended[t]).mean())
        out[f"{prefix}_intended_diff_only"] = float(intended[t].mean())
        out[f"{prefix}_unintended_diff_only"] = float(unintended[t].mean())
    return out


class Perturbation(NamedTuple):
    """Probe accuracies before and after the targeted ablations."""

    classes: list[int]
    """The class indices, in the order of the rows and columns below."""
    clean: Tensor
    """Held-out accuracy of each class's probe [C]."""
    ablated: Tensor
    """Accuracy of probe j after ablating class i's latents [T, C (i), C (j)]; NaN where the
    dictionary has fewer latents than the threshold."""
    latents: list[Tensor]
    """For each class, its latents by effect, for the largest threshold that applies."""


def targeted_probe_perturbation(raw: Tensor, codes: Tensor, targets: Tensor, train: Tensor,
                                directions: Tensor, thresholds: Sequence[int] = THRESHOLDS,
                                seed: int = 0) -> Perturbation:
    """TPP on pooled activations raw [N, D] and codes [N, F] with classes `targets` [N]: probes
    fitted on the raw activations of the texts where `train` [N] is True (one-vs-rest,
    balanced), latent effects measured on those texts, accuracies on the others; `directions`
    [F, D] from `decoder_directions`."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = train.nonzero()[:, 0], (~train).nonzero()[:, 0]
    classes = targets.unique().tolist()
    probes, tests, effects = [], [], []
    for c in classes:
        tr, te = one_vs_rest(targets[train_idx], c, g), one_vs_rest(targets[test_idx], c, g)
        probe = fit_probe(raw[train_idx[tr.index]], tr.y, standardize=True, seed=seed)
        probes.append(probe)
        tests.append(ProbeSet(test_idx[te.index], te.y))
        effects.append(latent_effects(codes[train_idx[tr.index]], tr.y, raw_weight(probe),
                                      directions))
    clean = torch.tensor([accuracy(p, raw[t.index], t.y) for p, t in zip(probes, tests)])
    ablated = torch.full((len(thresholds), len(classes), len(classes)), math.nan)
    latents = []
    for i in range(len(classes)):
        for t, n in enumerate(thresholds):
            if n > codes.shape[1]:
                continue
            chosen = select_latents(effects[i], n)
            changed = ablate(raw, codes, directions, chosen)
            ablated[t, i] = torch.tensor([accuracy(p, changed[s.index], s.y)
                                          for p, s in zip(probes, tests)])
        latents.append(select_latents(effects[i], min(max(thresholds), codes.shape[1])))
    return Perturbation(classes, clean, ablated, latents)


@register("tpp")
class TargetedProbePerturbation(ConceptFamily):
    """Targeted probe perturbation (SAEBench's TPP): for each class of labelled texts, zero-ablate
    the n latents with the largest effect on that class's probe (a logistic regression on the
    raw activations, one-vs-rest) and measure the drop in accuracy of that probe against the
    drop of the other classes' probes, for n = 2, 5, 10, 20, 50, 100, 500. Activations and codes
    are averaged over each text's tokens; 80% of each class's texts fit the probes and rank the
    latents, 20% score.

    Figures (under `report["tpp"]`), for each n, averaged over classes (accuracy differences,
    between -1 and 1):

    - `tpp_threshold_{n}_intended_diff_only`: the drop of the ablated class's own probe;
    - `tpp_threshold_{n}_unintended_diff_only`: the mean drop of the other classes' probes;
    - `tpp_threshold_{n}_total_metric`: intended minus unintended (higher is better);
    - `clean_probe_accuracy`: the probes' held-out accuracy before any ablation;
    - `n_classes`, `n_texts`: the classes probed and the texts pooled.

    The figures of an n above the dictionary's number of latents are NaN (conditional).
    Latent effect (SAEBench's, for TPP): max(0, mean pooled code in the class - in the rest) x
    (probe weight . the latent's decoder direction); only latents with a non-zero effect are
    ablated. The ablation keeps the dictionary's error: x - sum of code x decoder direction over
    the ablated latents. Refused for transcoders (their output is not their input).

    Labels and pooling as for `sparse_probing` (the Wikipedia topics by default from the command
    line: `saelab eval SAE STORE --metrics tpp [--labels FILE]`).

    Departures from SAEBench: data as for `sparse_probing` (Wikipedia topics instead of bias in
    bios professions and Amazon review categories, 4,000 / 1,000 texts); the probes are
    scikit-learn logistic regressions (L2, C = 1) on standardised activations, where SAEBench
    trains an L1-penalised linear probe by gradient (20 epochs, batch 16); the ablation is
    applied to the pooled codes and activations (equal to SAEBench's per-token ablation for any
    decoder affine in its codes); the probes are scored on held-out balanced sets drawn once.
    Parity: with sae-bench 0.6.0 installed, the tests run SAEBench's
    `get_effects_per_class_precomputed_acts`, `select_top_n_features`,
    `ablated_precomputed_activations` and `create_tpp_plotting_dict` on the same tensors (token
    activations of two classes, a saelab TopK SAE) and agree to 1e-5; its probe training is not
    compared (the probes differ by design, above).
    """

    figures = tuple(f"tpp_threshold_{n}_{part}" for n in THRESHOLDS
                    for part in ("total_metric", "intended_diff_only", "unintended_diff_only")) \
        + ("clean_probe_accuracy", "n_classes", "n_texts")
    headline = (f"tpp_threshold_{HEADLINE_THRESHOLD}_total_metric",
                f"tpp_threshold_{HEADLINE_THRESHOLD}_intended_diff_only",
                f"tpp_threshold_{HEADLINE_THRESHOLD}_unintended_diff_only",
                "clean_probe_accuracy")
    conditional = tuple(f"tpp_threshold_{n}_{part}" for n in THRESHOLDS if n > min(THRESHOLDS)
                        for part in ("total_metric", "intended_diff_only",
                                     "unintended_diff_only"))

    @classmethod
    def check(cls, context: Context) -> None:
        d = context.dictionary
        if "target" in getattr(d, "needs", ()) or d.d_in != d.d_out:
            raise ConfigError(f"tpp: ablating latents of a {d.architecture} changes another "
                              f"activation than the one it reads; TPP needs a dictionary that "
                              f"reconstructs its input (an SAE)")
        super().check(context)

    def run(self) -> dict[str, float]:
        c = self.context
        labels, pooled, targets, seed = self.inputs()
        train = stratified_split(targets, generator=torch.Generator().manual_seed(seed))
        result = targeted_probe_perturbation(pooled.raw, pooled.codes, targets, train,
                                             decoder_directions(c.dictionary), THRESHOLDS, seed)
        out = tpp_figures(result.clean, result.ablated, THRESHOLDS)
        out.update(clean_probe_accuracy=float(result.clean.mean()),
                   n_classes=len(result.classes), n_texts=len(labels))
        return {name: out.get(name, math.nan) for name in self.figures}
