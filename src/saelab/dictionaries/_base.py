"""The Dictionary contract every variant follows, gradient-trained or not.

A variant is one file in this folder: a config dataclass (subclass of `DictionaryConfig`) and a
`Dictionary` subclass registered by name with `@register("name")`. The conformance tests pick it
up by itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Literal, NamedTuple

import torch
from torch import Tensor, nn

from saelab.config import check, option, required
from saelab.dictionaries._formats import SaeLensMapping, SparsifyMapping
from saelab.dictionaries._input_norm import input_normalised
from saelab.dictionaries._native import save
from saelab.ops.sparse import linear

NEEDS = ("target", "labels", "gradients")
"""What a dictionary may need for training besides its input rows (`Dictionary.needs`)."""
TRAINED_BY = ("gradient", "fit", "model")
"""How a dictionary is trained (`Dictionary.trained_by`)."""
INPUT_NORMS = ("none", "constant_norm_rescale", "layer_norm")
"""Values of `DictionaryConfig.input_norm` (SAELens' run-time `normalize_activations`)."""


@dataclass
class DictionaryConfig:
    """Fields every dictionary has. Variants subclass this and add their own fields."""

    d_in: int = required("Width of the input activations.")
    n_latents: int = required("Number of dictionary atoms (latents).")
    d_out: int | None = option(None, "Width of the output; defaults to d_in (differs for "
                                     "transcoders).")
    input_norm: Literal["none", "constant_norm_rescale", "layer_norm"] = option("none", "Per-input normalisation around encode/decode, as SAELens' "
                             "normalize_activations: none, constant_norm_rescale or layer_norm. "
                             "Set when reading such a SAELens SAE; training with it is refused.")

    def __post_init__(self) -> None:
        if self.d_out is None:
            self.d_out = self.d_in
        check(self.input_norm in INPUT_NORMS, "input_norm",
              f"must be one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}")
        for name in ("d_in", "n_latents", "d_out"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
                  f"must be a positive integer, got {value!r}")


def auxk_coeff_option(default: float, note: str = "") -> float:
    """The `auxk_coeff` field with the one help text; `note` adds a clause to it (a variant that
    changes the default redeclares the field with this)."""
    return option(default, f"Weight of the AuxK dead-latent loss (0 disables it{note}).")


@dataclass
class AuxKConfig(DictionaryConfig):
    """DictionaryConfig plus the two fields of AuxK, the dead-latent loss of Gao et al. 2024
    (`saelab.ops.auxk`). A variant with AuxK subclasses this and calls `saelab.ops.auxk.add_auxk`
    in its loss; one whose AuxK is off by default redeclares `auxk_coeff` with
    `auxk_coeff_option(0.0)`."""

    auxk_coeff: float = auxk_coeff_option(1 / 32)
    auxk_k: int | None = option(None, "Latents used by AuxK; default d_in // 2.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.default_auxk()
        check(isinstance(self.auxk_coeff, (int, float)) and not isinstance(self.auxk_coeff, bool)
              and self.auxk_coeff >= 0, "auxk_coeff", f"must be >= 0, got {self.auxk_coeff}")
        check(isinstance(self.auxk_k, int) and not isinstance(self.auxk_k, bool)
              and self.auxk_k > 0, "auxk_k", f"must be a positive integer, got {self.auxk_k!r}")

    def default_auxk(self) -> None:
        """Fill the AuxK fields left as None: auxk_k = d_in // 2 (at least 1). A variant whose
        defaults depend on other fields overrides this."""
        if self.auxk_k is None:
            self.auxk_k = max(1, self.d_in // 2)


class Output(NamedTuple):
    """What `dictionary(x)` returns."""

    x_hat: Tensor
    """Reconstruction [B, d_out]."""
    codes: Tensor
    """Dense latent codes [B, n_latents]."""


class Rows(NamedTuple):
    """One batch handed to `Dictionary.fit` (dictionaries with `trained_by == "fit"`)."""

    x: Tensor
    """Input rows [B, d_in]."""
    target: Tensor | None = None
    """Target rows [B, d_out] for dictionaries that predict another activation; else None."""
    labels: Tensor | None = None
    """Per-row concept labels [B] or [B, n_concepts] for supervised dictionaries; else None."""


def as_rows(batch: Tensor | tuple | Rows) -> Rows:
    """A batch given to `fit` as `Rows`: a tensor x, an (x, target) tuple, or `Rows` itself (so
    that `dictionary.fit(x.split(1024))` works as well as the training loop's batches)."""
    if isinstance(batch, Rows):
        return batch
    if isinstance(batch, Tensor):
        return Rows(batch)
    if isinstance(batch, tuple) and len(batch) == 2:
        return Rows(*batch)
    raise TypeError(f"fit takes batches of tensors, (x, target) tuples or "
                    f"saelab.dictionaries.Rows; got {type(batch).__name__}")


class Loss(NamedTuple):
    """What `dictionary.loss(x, state)` returns for one training batch."""

    total: Tensor
    """Scalar to minimise."""
    terms: dict[str, Tensor]
    """Named parts of the total (e.g. mse, l1, auxk), detached or not."""
    metrics: dict[str, float]
    """Numbers to log (e.g. fvu, l0); plain floats."""
    active: Tensor
    """Bool [n_latents]: which latents fired on this batch (dead-latent tracking)."""


@dataclass
class StepState:
    """What the training loop tells a variant about the current step."""

    step: int = 0
    """Index of the current optimiser step (0-based)."""
    total_steps: int = 1
    """Number of steps the run will take."""
    dead_mask: Tensor | None = None
    """Bool [n_latents]: latents that have not fired for the dead window (None: not tracked)."""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Anything else a variant needs (labels, gradients, ...)."""


class Dictionary(nn.Module):
    """Base of every dictionary: encode, decode, forward, and loss or fit.

    Weights follow one naming scheme so that shared code (training, folding of the input
    normalisation, conversion) can reach them: `W_dec` [n_latents, d_out] holds the atoms,
    `b_dec` [d_out] the decoder bias.
    """

    architecture: ClassVar[str] = ""
    """Registered name; set by `@register`."""
    Config: ClassVar[type[DictionaryConfig]] = DictionaryConfig
    """The config dataclass of this variant."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """What training needs besides the input rows, a subset of `NEEDS`: "target" (dictionaries
    that predict another activation, transcoders: `loss` takes a target, evaluation compares
    with it), "labels" (concept labels per row), "gradients" (the model's loss gradient per
    row). A variant whose needs depend on its config overrides this with a property."""
    trained_by: ClassVar[str] = "gradient"
    """"gradient": trained by `saelab.fit` through `loss`; "fit": trained by its own
    `fit(batches)` (PCA, ITDA, semi-NMF, ...); "model": read from a model's weights by the
    variant's own constructor (MLP neurons), never trained (`saelab.fit` refuses it)."""
    formats: ClassVar[dict[str, SaeLensMapping | SparsifyMapping]] = {}
    """This variant in other libraries' formats, declared in its own file (read in the variant's
    own class only, never inherited): "saelens" -> `SaeLensMapping`, "sparsify" ->
    `SparsifyMapping` (saelab.dictionaries._formats), e.g.
    `{"saelens": SaeLensMapping(architecture="topk", fields={"k": "k"}),
    "sparsify": SparsifyMapping()}`. `saelab.io` converts by this; a format missing here is
    refused with the list of those present. saelab's own format needs no entry."""
    unit_norm_decoder: ClassVar[bool] = True
    """If True, the trainer keeps the rows of W_dec at unit norm and removes the gradient
    component parallel to them."""
    scales_with_input: ClassVar[tuple[str, ...]] = ("b_dec",)
    """Parameters (and buffers) that are in the units of the input: when the input is scaled by
    s during training, dividing these by s gives the same dictionary on unscaled inputs."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        self.provenance: dict[str, Any] = {}
        self.exact_tensors: dict[str, Tensor] = {}
        """Tensors as a foreign file stored them, where saelab's parametrisation cannot hold every
        value bit for bit (a SAELens JumpReLU threshold vs saelab's log_threshold). Never used
        in computation; writers put them back where the parameter still maps to them."""
        if getattr(cfg, "input_norm", "none") != "none":
            check("target" not in self.needs and cfg.d_in == cfg.d_out, "input_norm",
                  "is for dictionaries that reconstruct their input (SAEs), not transcoders")
            self.__class__ = input_normalised(type(self))

    # --- the contract -----------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Codes [B, n_latents] for inputs [B, d_in]."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction [B, d_out] from codes [B, n_latents]."""
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Output:
        codes = self.encode(x)
        return Output(self.decode(codes), codes)

    def loss(self, x: Tensor, state: StepState, target: Tensor | None = None) -> Loss:
        """Training loss on a batch `x` [B, d_in] (target [B, d_out] defaults to x)."""
        raise NotImplementedError(f"{type(self).__name__} is not trained by gradient; use fit()")

    def fit(self, batches: Iterable[Tensor | tuple | Rows]) -> None:
        """Train without gradients (for variants with trained_by = "fit"). Each batch is a
        tensor x [B, d_in], an (x, target) tuple, or `Rows` (with labels for supervised
        dictionaries); read it with `as_rows(batch)`. The training loop passes `Rows`."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient; use saelab.fit")

    # --- shared helpers ---------------------------------------------------------------------
    def centered(self, x: Tensor) -> Tensor:
        """The encoder's input: x - b_dec for autoencoders (d_in == d_out), x for transcoders."""
        return x - self.b_dec if self.d_in == self.d_out else x

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder pre-activations [B, n_latents] = centred x W_enc^T + b_enc (for variants with
        those weights)."""
        return linear(self.centered(x), self.W_enc, self.b_enc)

    def init_tied_weights(self) -> None:
        """W_dec with random unit rows [n_latents, d_out], W_enc its copy (tied initialisation,
        as in Gao et al. 2024; independent unit rows when d_in != d_out), zero biases."""
        cfg = self.cfg
        W = unit_rows(cfg.n_latents, cfg.d_out)
        self.W_dec = nn.Parameter(W)
        self.W_enc = nn.Parameter(W.clone() if cfg.d_in == cfg.d_out
                                  else unit_rows(cfg.n_latents, cfg.d_in))
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Initialise data-dependent parameters from a sample [N, d_in] (default: b_dec to the
        mean of the targets)."""
        if x.shape[-1] == self.d_out:
            self.b_dec.copy_(x.mean(0))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Turn a dictionary trained on `scale * x` into the same dictionary on `x`."""
        for name in self.scales_with_input:
            getattr(self, name).div_(scale)

    @torch.no_grad()
    def fold_scales(self, input_scale: float, target_scale: float) -> None:
        """Turn a dictionary trained on (input_scale * x, target_scale * y) into the same one on
        (x, y). A dictionary that reconstructs its input has one scale (`fold_input_scale`);
        transcoders, whose target lives in another space, override this."""
        if target_scale != input_scale:
            raise ValueError(f"{self.architecture} reconstructs its input: one scale, got "
                             f"{input_scale} and {target_scale}")
        self.fold_input_scale(input_scale)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale the rows of W_dec to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component parallel to each (unit-norm) decoder row."""
        if self.W_dec.grad is None:
            return
        parallel = torch.linalg.vecdot(self.W_dec.grad, self.W_dec)  # [n_latents]
        self.W_dec.grad.addcmul_(parallel[:, None], self.W_dec, value=-1)

    def save(self, path) -> None:
        """Save as a folder: cfg.json + weights.safetensors (atomic; `saelab.load` reads it)."""
        save(self, path)

    def extra_repr(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.cfg, f.name)!r}"
                           for f in dataclasses.fields(self.cfg))
        return f"architecture={self.architecture!r}, {fields}"


def check_k(cfg: DictionaryConfig, name: str = "k") -> None:
    """Validate an active-latent count field: an integer in [1, n_latents]."""
    k = getattr(cfg, name)
    check(isinstance(k, int) and not isinstance(k, bool) and 0 < k <= cfg.n_latents, name,
          f"must be an integer in [1, n_latents={cfg.n_latents}], got {k!r}")


def unit_rows(n: int, d: int, generator: torch.Generator | None = None) -> Tensor:
    """A random [n, d] matrix with unit-norm rows."""
    w = torch.randn(n, d, generator=generator)
    return w / w.norm(dim=1, keepdim=True)


def dense_encoder_scale(d_in: int, n_latents: int) -> float:
    """Scale for a tied encoder (W_enc = W_dec with unit rows) of a dictionary without a hard k
    (ReLU/L1, Gated): about half the latents fire at initialisation, so W_dec^T ReLU(W_dec x) is
    about n_latents / (2 d_in) times x; min(1, 2 d_in / n_latents) starts the reconstruction at
    the input's size instead of several times it. Measured on 512 planted directions in 64
    dimensions, 1,024 latents: 9% recovered unscaled, 96% scaled (Gated, 1,500 steps); 57% and
    99% (ReLU with plain L1, 3,000 steps, lambda 0.2)."""
    return min(1.0, 2 * d_in / n_latents)


def squared_error(x_hat: Tensor, target: Tensor) -> Tensor:
    """Per-row squared error summed over features, [B]."""
    return (x_hat - target).pow(2).sum(dim=-1)


def fvu(x_hat: Tensor, target: Tensor) -> Tensor:
    """Fraction of variance unexplained on a batch: squared error over total variance."""
    total = (target - target.mean(0)).pow(2).sum()
    return squared_error(x_hat, target).sum() / total.clamp_min(1e-12)
