"""Supervised feature dictionary: one atom per value of each known attribute of a templated task.

"Towards Principled Evaluations of Sparse Autoencoders for Interpretability and Control" (Makelov,
Lange and Nanda 2024) holds an unsupervised dictionary against features fitted to what is known
about a task. For indirect object identification (`saelab.data.ioi`) every prompt has three
attributes, the IO name, the S name and the position of IO (`io`, `s`, `io_pos`); the supervised
dictionary has one atom per value of each attribute, the conditional mean of the centred
activations over the rows where the attribute takes that value, and reconstructs an activation
as the mean plus the atoms of its attribute values (their reference code, github.com/amakelov/sae:
`circuit_utils.py`, `get_mean_codes` for the means and `get_mse_codes` for the least-squares
alternative, `get_reconstructions` for the sum, `get_edited_act` for editing). Relative to a TopK
SAE: the atoms are not learned from reconstruction but read from labels, exactly one atom per
attribute is active (k is the number of attributes), and the codes are 0/1.

The module also holds the paper's three-way comparison of any dictionary against it:
- approximation: `logit_diff_recovered`, the share of the model's task behaviour (the logit
  difference) kept when the reconstruction is spliced in, between mean ablation (0) and the clean
  model (1);
- control: `edit_supervised` (swap an attribute's atom for another value's: "arithmetic" editing),
  `edit_by_exchange` (the paper's interpretation-agnostic SAE edit, `get_edit_using_sae_opt`: the
  latents whose change towards the counterfactual activation's codes brings the activation closest
  to it, chosen greedily) and `edit_by_f1` (the interpretation-aware edit,
  `get_edit_using_f1_scores`: remove the active latents that best mark the old value, add those
  that best mark the new one), scored by `edit_accuracy`, how often the edited model predicts what
  it predicts with the counterfactual activation patched in;
- interpretability: `attribute_f1` and `interpretability`, the F1 score of each latent's firing
  as a detector of each attribute value and the best latent per value (`sae_interp.py`,
  `get_feature_scores`). `bench/supervised_ioi.py` runs the three on SmolLM2-135M.

Labels: attribute values `[B, n_attributes]` (non-negative integers; `[B]` for one attribute),
e.g. `IOIPrompts.attributes()`, in `Rows(x, None, values)` batches given to `fit`. Through
`saelab.fit`, whose `saelab.train.Labelled` takes labels in [0, 1] only, they come as indicator
columns, one per value (`indicator_labels(values, sizes)`), with the config's `values` saying how
many columns each attribute has. The latents are laid out attribute by attribute: attribute a's
values 0..n_a-1 (n_a from `values`, or the largest value seen plus one) take latents offset_a ..
offset_a + n_a - 1, recorded in the buffers `attribute_of` and `value_of` ([n_latents], -1 for
latents beyond the layout, whose atoms are zero). A value never seen keeps a zero atom (logged).
Without `values`, 0/1 labels `[B, n]` are n binary attributes (two latents each).

The dictionary:
- `encode_labels(labels)`: the codes of known attribute values (one-hot per attribute), so
  `decode(encode_labels(labels))` is the paper's reconstruction;
- `encode(x)`, without labels: for each attribute, the value whose atom best explains the
  residual left by the other attributes (coordinate descent on the squared error, `sweeps` passes
  from all-zero codes); one active latent per attribute, as `encode_labels` gives;
- `decode(codes) = codes W_dec + b_dec`, with `b_dec` the mean of all rows.

From Python, with IOI prompts `prompts` (106 names) and their activations `x` [N, 576]:
- `sizes = prompts.value_counts()` gives (106, 106, 2);
- `sup = saelab.create("supervised", d_in=576, n_latents=214, values=list(sizes))`;
- `labels = indicator_labels(prompts.attributes(), sizes)`;
- `cfg = saelab.TrainConfig(steps=1, batch_size=len(x))` (one batch of every row; the sums also
  stream over many batches);
- `sup = saelab.fit(sup, saelab.train.Labelled(x, labels), cfg)`.

There is no labelled store format yet, so `saelab train STORE --architecture supervised` is
refused with a message asking for labels.

Where saelab chooses:
- `method="mean"` (default) is the paper's: atom = E[x | attribute = value] - E[x].
  `method="least_squares"` fits the atoms jointly (the reference's `get_mse_codes`): the
  minimum-norm solution of the centred one-hot design against the centred rows, from the same
  running sums; with independent, balanced attributes the two agree.
- Sums run over the batches in float64 (one batch plus `n_values^2 + n_values * d_in` numbers),
  so fitting streams over any number of rows.
- Labels that are negative, not integers, change their number of attributes between batches, or
  need more latents than `n_latents` are refused with a DataError that says how many are needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from saelab.config import check, option
from saelab.dictionaries._base import Dictionary, DictionaryConfig, Rows, as_rows
from saelab.dictionaries._registry import register
from saelab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SupervisedConfig(DictionaryConfig):
    method: Literal["mean", "least_squares"] = option(
        "mean", "How the atoms are fitted: mean (conditional mean of the centred rows per value, "
                "the paper's) or least_squares (all atoms jointly, minimum norm).")
    sweeps: int = option(2, "Coordinate-descent passes of encode (attribute values inferred "
                            "from an activation without labels).")
    values: list[int] | None = option(None, "Number of values of each attribute (each at least "
                                            "2); fixes the layout and lets labels come as 0/1 "
                                            "indicator columns, one per value (what "
                                            "saelab.train.Labelled passes). None: the largest "
                                            "value seen plus one.")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.d_out == self.d_in, "d_out",
              f"must equal d_in={self.d_in} (the dictionary reconstructs its input), got "
              f"{self.d_out}")
        check(self.method in ("mean", "least_squares"), "method",
              f"must be mean or least_squares, got {self.method!r}")
        check(isinstance(self.sweeps, int) and not isinstance(self.sweeps, bool)
              and self.sweeps > 0, "sweeps", f"must be a positive integer, got {self.sweeps!r}")
        if self.values is not None:
            self.values = list(self.values)
            check(len(self.values) > 0 and all(isinstance(v, int) and not isinstance(v, bool)
                                               and v >= 2 for v in self.values), "values",
                  f"must be a list of integers >= 2 (values of each attribute), got "
                  f"{self.values!r}")
            check(sum(self.values) <= self.n_latents, "values",
                  f"need {sum(self.values)} latents, one per value; n_latents is "
                  f"{self.n_latents}")


def indicator_labels(values: Tensor, sizes: Sequence[int]) -> Tensor:
    """Attribute values [N, n_attributes] as 0/1 indicator columns [N, sum(sizes)] (attribute a's
    values in columns offset_a .. offset_a + sizes[a] - 1): the form `saelab.train.Labelled` takes
    (it accepts labels in [0, 1] only); fit with `values=list(sizes)`."""
    return one_hot_design(values.long(), tuple(sizes)).float()


def attribute_values(labels: Tensor | None, rows: int, sizes: Sequence[int] | None = None
                     ) -> Tensor:
    """Labels as a long matrix [rows, n_attributes] of non-negative values (a DataError if they
    do not fit). With `sizes` (the config's `values`), labels are either those values or 0/1
    indicator columns [rows, sum(sizes)] with one 1 per attribute."""
    if labels is None:
        raise DataError("the supervised dictionary is fitted to attribute labels: pass "
                        "saelab.train.Labelled(x, indicator_labels(values, sizes)) to saelab.fit "
                        "(with values=sizes), or Rows(x, None, values) batches to fit")
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != rows:
        raise DataError(f"labels have shape {tuple(labels.shape)} for a batch of {rows} rows; "
                        f"expected [{rows}, n_attributes] (or [{rows}] for one attribute)")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise DataError("supervised labels are attribute values: non-negative integers")
    if sizes is not None and labels.shape[1] == sum(sizes):
        return indicator_values(labels, sizes)
    if sizes is not None and labels.shape[1] != len(sizes):
        raise DataError(f"labels have {labels.shape[1]} columns; the dictionary's attributes "
                        f"(values={list(sizes)}) take {len(sizes)} columns of values or "
                        f"{sum(sizes)} indicator columns")
    labels = labels.long()
    if rows and labels.min() < 0:
        raise DataError("supervised labels are attribute values: non-negative integers, got "
                        f"{int(labels.min())}")
    if sizes is not None and rows:
        over = labels.max(0).values >= torch.tensor(sizes, device=labels.device)
        if over.any():
            a = int(over.nonzero()[0])
            raise DataError(f"attribute {a} has a value {int(labels[:, a].max())} but values="
                            f"{list(sizes)} gives it {sizes[a]} (0..{sizes[a] - 1})")
    return labels


def indicator_values(labels: Tensor, sizes: Sequence[int]) -> Tensor:
    """Values [rows, n_attributes] from indicator columns [rows, sum(sizes)] (exactly one 1 per
    attribute and row, else a DataError)."""
    values = []
    for a, block in enumerate(labels.split(list(sizes), dim=1)):
        if not (((block == 0) | (block == 1)).all() and (block.sum(1) == 1).all()):
            raise DataError(f"indicator labels of attribute {a} (columns {sum(sizes[:a])}.."
                            f"{sum(sizes[:a + 1]) - 1}) need exactly one 1 per row")
        values.append(block.argmax(1))
    return torch.stack(values, 1).long()


class Sums(NamedTuple):
    """Running sums over the batches, in float64, over the one-hot design C [rows, n_values]
    (one column per value of each attribute, attributes in order)."""

    total: Tensor
    """Sum of all rows [d_in]."""
    gram: Tensor
    """C^T C [n_values, n_values] (its diagonal: the rows of each value)."""
    cross: Tensor
    """C^T x [n_values, d_in] (sum of the rows of each value)."""
    rows: int
    """Rows seen."""
    sizes: tuple[int, ...]
    """Values of each attribute (largest seen plus one)."""


def grown(sums: Sums, sizes: tuple[int, ...]) -> Sums:
    """`sums` laid out for the (larger or equal) attribute sizes `sizes`."""
    if sums.sizes == sizes:
        return sums
    old = torch.cat([torch.arange(n) + sum(sizes[:a]) for a, n in enumerate(sums.sizes)])
    gram = sums.gram.new_zeros(sum(sizes), sum(sizes))
    gram[old[:, None], old[None, :]] = sums.gram
    cross = sums.cross.new_zeros(sum(sizes), sums.cross.shape[1])
    cross[old] = sums.cross
    return Sums(sums.total, gram, cross, sums.rows, sizes)


def one_hot_design(values: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """The one-hot design [rows, sum(sizes)] of attribute values [rows, n_attributes]."""
    offsets = torch.tensor([sum(sizes[:a]) for a in range(len(sizes))], device=values.device)
    design = torch.zeros(values.shape[0], sum(sizes), dtype=torch.float64, device=values.device)
    design.scatter_(1, values + offsets, 1.0)
    return design


def running_sums(batches: Iterable, d_in: int, fixed: Sequence[int] | None = None) -> Sums:
    """The sums over `batches` (each read with `as_rows`), checking every batch's labels; the
    attributes have `fixed` values, or the largest seen plus one."""
    sums: Sums | None = None
    for batch in batches:
        rows = as_rows(batch)
        x = rows.x
        if x.ndim != 2 or x.shape[1] != d_in:
            raise DataError(f"a batch has shape {tuple(x.shape)}; expected [batch, d_in={d_in}]")
        values = attribute_values(rows.labels, x.shape[0], fixed).to(x.device)
        if sums is not None and values.shape[1] != len(sums.sizes):
            raise DataError(f"a batch has labels of {values.shape[1]} attributes after batches "
                            f"of {len(sums.sizes)}; every batch needs the same attributes")
        if x.shape[0] == 0:
            continue
        seen = tuple(fixed) if fixed else tuple(int(v) + 1 for v in values.max(0).values)
        sizes = seen if sums is None else tuple(map(max, sums.sizes, seen))
        design = one_hot_design(values, sizes)  # [B, n_values]
        x64 = x.detach().double()
        batch_sums = Sums(x64.sum(0), design.T @ design, design.T @ x64, x.shape[0], sizes)
        if sums is None:
            sums = batch_sums
        else:
            sums = grown(sums, sizes)
            sums = Sums(sums.total + batch_sums.total, sums.gram + batch_sums.gram,
                        sums.cross + batch_sums.cross, sums.rows + batch_sums.rows, sizes)
    if sums is None or sums.rows == 0:
        raise DataError("the supervised dictionary got no rows to fit")
    return sums


def mean_atoms(sums: Sums) -> Tensor:
    """E[x | value] - E[x] per value [n_values, d_in] (zero for values never seen)."""
    counts = sums.gram.diagonal()[:, None]  # [n_values, 1]
    mean = sums.total / sums.rows
    atoms = sums.cross / counts.clamp_min(1) - mean
    return torch.where(counts > 0, atoms, torch.zeros_like(atoms))


def least_squares_atoms(sums: Sums) -> Tensor:
    """The minimum-norm atoms U minimising ||(x - mean) - (C - mean C) U||^2 [n_values, d_in]."""
    n = sums.rows
    share = sums.gram.diagonal() / n  # column means of C [n_values]
    mean = sums.total / n
    centred_gram = sums.gram - n * share[:, None] * share[None, :]
    centred_cross = sums.cross - sums.gram.diagonal()[:, None] * mean[None, :]
    return torch.linalg.pinv(centred_gram, hermitian=True) @ centred_cross


@register("supervised")
class Supervised(Dictionary):
    """Supervised feature dictionary (Makelov et al. 2024). Weights: W_dec [n_latents, d_in] (one
    atom per attribute value; zero rows beyond them), b_dec [d_in] (mean of all rows); buffers
    attribute_of, value_of [n_latents] (long: the attribute and value of each latent, -1 beyond
    the layout)."""

    Config = SupervisedConfig
    trained_by = "fit"
    needs = frozenset({"labels"})
    unit_norm_decoder = False
    scales_with_input = ("W_dec", "b_dec")

    def __init__(self, cfg: SupervisedConfig):
        super().__init__(cfg)
        self.W_dec = nn.Parameter(torch.zeros(cfg.n_latents, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("attribute_of", torch.full((cfg.n_latents,), -1, dtype=torch.long))
        self.register_buffer("value_of", torch.full((cfg.n_latents,), -1, dtype=torch.long))

    # --- layout -------------------------------------------------------------------------------
    @property
    def sizes(self) -> tuple[int, ...]:
        """Values of each attribute (empty before fit)."""
        used = self.attribute_of[self.attribute_of >= 0]
        if used.numel() == 0:
            return ()
        return tuple(int((used == a).sum()) for a in range(int(used.max()) + 1))

    def latent(self, attribute: int, value: Tensor | int) -> Tensor:
        """Latent index of `value`s of `attribute` (long tensor shaped like `value`)."""
        sizes = self.sizes
        if not 0 <= attribute < len(sizes):
            raise DataError(f"attribute {attribute} is not among the {len(sizes)} fitted")
        value = torch.as_tensor(value, device=self.W_dec.device).long()
        if value.numel() and (value.min() < 0 or value.max() >= sizes[attribute]):
            raise DataError(f"attribute {attribute} has values 0..{sizes[attribute] - 1}")
        return value + sum(sizes[:attribute])

    def encode_labels(self, labels: Tensor) -> Tensor:
        """Codes of known attribute values [B, n_latents]: 1 at each attribute's value."""
        values = attribute_values(labels, labels.shape[0], self.cfg.values).to(self.W_dec.device)
        if values.shape[1] != len(self.sizes):
            raise DataError(f"labels of {values.shape[1]} attributes for a dictionary fitted to "
                            f"{len(self.sizes)}")
        codes = torch.zeros(values.shape[0], self.n_latents, dtype=self.W_dec.dtype,
                            device=self.W_dec.device)
        for a in range(values.shape[1]):
            codes.scatter_(1, self.latent(a, values[:, a])[:, None], 1.0)
        return codes

    # --- the contract -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """One latent per attribute, the value whose atom best explains x given the others'."""
        sizes = self.sizes
        codes = torch.zeros(x.shape[0], self.n_latents, dtype=x.dtype, device=x.device)
        if not sizes:
            return codes
        atoms = self.W_dec.to(x.dtype)
        norms = atoms.pow(2).sum(-1)  # [n_latents]
        chosen = torch.zeros(x.shape[0], len(sizes), dtype=torch.long, device=x.device)
        residual = x - self.b_dec  # x - b_dec - atoms of the values chosen so far
        for sweep in range(self.cfg.sweeps):
            for a, n in enumerate(sizes):
                lo = sum(sizes[:a])
                if sweep > 0:  # choose attribute a again, given the others
                    residual = residual + atoms[chosen[:, a]]
                # ||r - u||^2 = ||r||^2 - 2 r.u + ||u||^2: the best value maximises 2 r.u - ||u||^2
                score = 2 * residual @ atoms[lo:lo + n].T - norms[lo:lo + n]  # [B, n]
                chosen[:, a] = score.argmax(1) + lo
                residual = residual - atoms[chosen[:, a]]
        codes.scatter_(1, chosen, 1.0)
        return codes

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor | tuple | Rows]) -> None:
        """Atoms from running sums over `batches` (Rows with labels); replaces any earlier fit."""
        sums = running_sums(batches, self.d_in, self.cfg.values)
        total = sum(sums.sizes)
        if total > self.n_latents:
            raise DataError(f"labels of attributes with {list(sums.sizes)} values need "
                            f"{total} latents, one per value; the dictionary has n_latents="
                            f"{self.n_latents}: create it with n_latents={total}")
        atoms = mean_atoms(sums) if self.cfg.method == "mean" else least_squares_atoms(sums)
        like = self.W_dec
        self.W_dec.zero_()
        self.W_dec[:total] = atoms.to(like)
        self.b_dec.copy_((sums.total / sums.rows).to(like))
        self.attribute_of.fill_(-1)
        self.value_of.fill_(-1)
        for a, n in enumerate(sums.sizes):
            lo = sum(sums.sizes[:a])
            self.attribute_of[lo:lo + n] = a
            self.value_of[lo:lo + n] = torch.arange(n)
        unseen = (sums.gram.diagonal() == 0).nonzero().flatten().tolist()
        if unseen:
            log.info("supervised: %d attribute values never seen (zero atoms): latents %s",
                     len(unseen), unseen[:20])


# --- the paper's comparison: approximation ----------------------------------------------------
def logit_diff_recovered(clean: Tensor, spliced: Tensor, ablated: Tensor) -> float:
    """Share of the task's mean logit difference kept when a reconstruction is spliced in:
    (spliced - ablated) / (clean - ablated) of the means over the prompts (1: all of it, 0: no more
    than mean ablation; the paper's "logit difference recovered vs mean ablation")."""
    gap = float(clean.mean() - ablated.mean())
    if abs(gap) < 1e-12:
        raise DataError("mean ablation does not change the logit difference: nothing to recover")
    return float(spliced.mean() - ablated.mean()) / gap


# --- control ----------------------------------------------------------------------------------
def edit_supervised(dictionary: Supervised, x: Tensor, attribute: int, old: Tensor,
                    new: Tensor) -> Tensor:
    """x with attribute `attribute`'s atom for the `old` values swapped for the `new` values'
    (x - u[old] + u[new]; the paper's "arithmetic" edit) [B, d_in]."""
    W = dictionary.W_dec.detach()
    return x - W[dictionary.latent(attribute, old)] + W[dictionary.latent(attribute, new)]


class Edit(NamedTuple):
    """An edit of activations by exchanging a dictionary's latents."""

    x: Tensor
    """The edited activations [B, d_in]."""
    latents: Tensor
    """The latents exchanged per row [B, n_exchange] (long)."""


@torch.no_grad()
def edit_by_exchange(dictionary: Dictionary, x: Tensor, x_target: Tensor,
                     n_exchange: int) -> Edit:
    """The paper's interpretation-agnostic edit: changing latent j from its code in x to its code
    in x_target moves x by delta_j = (c_target_j - c_j) W_dec_j; the `n_exchange` latents whose
    deltas, added one at a time (greedily), bring x closest to x_target are exchanged."""
    codes, target_codes = dictionary.encode(x), dictionary.encode(x_target)
    change = target_codes - codes  # [B, L]
    W = dictionary.W_dec.detach()  # [L, d]
    norms = W.pow(2).sum(-1)  # [L]
    rows = torch.arange(x.shape[0], device=x.device)
    moved = torch.zeros_like(x)
    latents = []
    for _ in range(n_exchange):
        gap = moved - (x_target - x)  # [B, d]
        # ||gap + c_j W_j||^2 - ||gap||^2 = 2 c_j gap.W_j + c_j^2 ||W_j||^2
        score = 2 * change * (gap @ W.T) + change.pow(2) * norms
        best = score.argmin(1)  # [B]
        moved = moved + change[rows, best, None] * W[best]
        change[rows, best] = 0  # never picked twice
        latents.append(best)
    return Edit(x + moved, torch.stack(latents, 1))


def attribute_f1(codes: Tensor, values: Tensor, n_values: int) -> Tensor:
    """F1 score of each latent's firing (code != 0) as a detector of each value of one attribute
    [n_latents, n_values]: precision = rows where it fires and the value holds / rows where it
    fires, recall = the same / rows where the value holds; 0 where undefined."""
    fires = (codes != 0).double()  # [N, L]
    holds = nn.functional.one_hot(values.long(), n_values).double()  # [N, V]
    both = fires.T @ holds  # [L, V]
    precision = both / fires.sum(0)[:, None].clamp_min(1)
    recall = both / holds.sum(0)[None, :].clamp_min(1)
    return (2 * precision * recall / (precision + recall).clamp_min(1e-12)).float()


@torch.no_grad()
def edit_by_f1(dictionary: Dictionary, x: Tensor, x_target: Tensor, f1: Tensor, old: Tensor,
               new: Tensor, n_exchange: int) -> Edit:
    """The paper's interpretation-aware edit: remove from x the `n_exchange` latents of highest
    F1 for each row's `old` value (`f1` [n_latents, n_values], from `attribute_f1`) among those
    active in x, and add the `n_exchange` of highest F1 for the `new` value among those active in
    x_target, with their codes there. Latents: the removed, then the added [B, 2 n_exchange]."""
    codes, target_codes = dictionary.encode(x), dictionary.encode(x_target)
    W = dictionary.W_dec.detach()

    def best_active(c: Tensor, value: Tensor) -> Tensor:  # [B, n_exchange]
        score = f1.T[value.long()].clone()  # [B, L]: F1 of every latent for each row's value
        score[c == 0] = -1  # inactive latents last
        return score.topk(n_exchange, dim=1).indices

    remove, add = best_active(codes, old), best_active(target_codes, new)
    out = x - (codes.gather(1, remove)[..., None] * W[remove]).sum(1) \
        + (target_codes.gather(1, add)[..., None] * W[add]).sum(1)
    return Edit(out, torch.cat([remove, add], 1))


def edit_accuracy(edited_prediction: Tensor, target_prediction: Tensor) -> float:
    """Share of prompts where the edited model predicts the token it predicts with the
    counterfactual activation patched in (the paper's edit accuracy)."""
    return float((edited_prediction == target_prediction).float().mean())


# --- interpretability -------------------------------------------------------------------------
class Interpretability(NamedTuple):
    """How well single latents detect the values of one attribute."""

    best_f1: Tensor
    """Best F1 over the latents for each value [n_values] (NaN for values absent from the
    rows)."""
    best_latent: Tensor
    """The latent that reaches it [n_values] (long)."""
    mean_best_f1: float
    """Mean of best_f1 over the values present."""


def interpretability(codes: Tensor, values: Tensor, n_values: int) -> Interpretability:
    """Best single-latent F1 per value of an attribute (codes [N, n_latents], values [N])."""
    f1 = attribute_f1(codes, values, n_values)  # [L, V]
    best, latent = f1.max(0)
    present = torch.bincount(values.long(), minlength=n_values) > 0
    best = torch.where(present, best, torch.full_like(best, float("nan")))
    return Interpretability(best, latent, float(best[present].mean()))
