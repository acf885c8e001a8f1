"""Per-input normalisation around encode/decode (SAELens' run-time `normalize_activations`),
for dictionaries read from SAELens with `input_norm` set: `input_normalised(cls)` is the variant
with `InputNorm` in front, which `Dictionary.__init__` switches to."""

from __future__ import annotations

from torch import Tensor

from saelab.errors import ConfigError

LAYER_NORM_EPS = 1e-5
"""SAELens' epsilon of its run-time layer norm."""


class InputNorm:
    """Mixed in front of a variant whose cfg.input_norm is not "none" (see `input_normalised`).

    SAELens' run-time normalisation, formula for formula (sae_lens.saes.sae,
    `_setup_activation_normalization`), per input row x [.., d_in]:
    - constant_norm_rescale: c = sqrt(d_in) / |x|; encode sees x * c; decode returns out / c.
    - layer_norm: mu = mean(x), s = std(x - mu) (unbiased, as torch.std); encode sees
      (x - mu) / (s + 1e-5); decode returns out * s + mu (SAELens leaves the eps out here).
    The contract is SAELens': `encode(x)` keeps the statistics of x and the next `decode(codes)`
    uses them and drops them (decode without a preceding encode of the same batch is an error);
    `forward(x)` / `dictionary(x)` does both at once and keeps nothing. Nested encode/decode calls
    inside a variant's own forward or encode are passed through untouched.
    """

    _norm_stats: tuple[Tensor, ...] | None = None
    _norm_busy: bool = False

    def _norm_in(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        if self.cfg.input_norm == "constant_norm_rescale":
            coeff = (self.cfg.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        return x / (std + LAYER_NORM_EPS), (mu, std)

    def _norm_out(self, out: Tensor, stats: tuple[Tensor, ...]) -> Tensor:
        if self.cfg.input_norm == "constant_norm_rescale":
            return out / stats[0]
        mu, std = stats
        return out * std + mu

    def _norm_call(self, method, x: Tensor, *args, **kwargs):
        xn, stats = self._norm_in(x)
        self._norm_busy = True
        try:
            return method(xn, *args, **kwargs), stats
        finally:
            self._norm_busy = False

    def encode(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self._norm_busy:
            return super().encode(x, *args, **kwargs)
        codes, self._norm_stats = self._norm_call(super().encode, x, *args, **kwargs)
        return codes

    def decode(self, codes: Tensor, *args, **kwargs) -> Tensor:
        if self._norm_busy:
            return super().decode(codes, *args, **kwargs)
        stats, self._norm_stats = self._norm_stats, None
        if stats is None or stats[0].shape[:-1] != codes.shape[:-1]:
            raise RuntimeError(f"input_norm={self.cfg.input_norm!r}: decode needs the statistics "
                               "of the inputs its codes came from; call encode(x) on the same "
                               "batch just before (as in SAELens), or use dictionary(x)")
        return self._norm_out(super().decode(codes, *args, **kwargs), stats)

    def forward(self, x: Tensor, *args, **kwargs):
        if self._norm_busy:
            return super().forward(x, *args, **kwargs)
        out, stats = self._norm_call(super().forward, x, *args, **kwargs)
        return out._replace(x_hat=self._norm_out(out.x_hat, stats))

    def loss(self, *args, **kwargs):
        raise ConfigError(f"training with input_norm={self.cfg.input_norm!r} is not "
                          "supported: it is read from SAELens for inference; saelab trains on "
                          "inputs as they come (its own normalisation is a fixed scale folded "
                          "into the weights)")

    fit = loss


NORMALISED: dict[type, type] = {}
"""Each variant's input-normalised class, made once."""


def input_normalised(cls: type) -> type:
    """`cls` with `InputNorm` in front, made once per variant (and kept if already one)."""
    if issubclass(cls, InputNorm):
        return cls
    if cls not in NORMALISED:
        name = f"InputNormalised{cls.__name__}"
        NORMALISED[cls] = type(name, (InputNorm, cls), {"__module__": cls.__module__,
                                                         "__qualname__": name})
    return NORMALISED[cls]
