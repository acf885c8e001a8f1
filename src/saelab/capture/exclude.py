"""Which token positions to leave out of training, evaluation and splicing.

Some positions carry activations hundreds of times larger than the rest (in SmolLM2's middle
layers: the first position and the `<|endoftext|>` separators, with norms near 25,000 against a
median near 170). Left in, they dominate the variance and the SAE learns little else. The rule
here drops special tokens and any row whose norm exceeds `norm_factor` x the median norm (the
median taken on the first captured batch and then fixed, so the rule is the same everywhere).
The rule is recorded in the activation store and in the dictionary's provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

NORM_FACTOR = 5.0
"""Default of every `norm_factor`: rows above 5 x the median norm are left out."""


@dataclass
class Exclusion:
    """A keep/drop rule for token positions."""

    special_ids: list[int] = field(default_factory=list)
    """Token ids whose positions are dropped (BOS, EOS, separators)."""
    norm_factor: float | None = NORM_FACTOR
    """Drop rows whose norm exceeds this multiple of the median norm (None: no norm rule)."""
    norm_threshold: dict[str, float] = field(default_factory=dict)
    """Absolute norm limit per hookpoint key, fixed from the first batch."""

    def calibrate(self, tokens: Tensor, acts: dict[str, Tensor]) -> None:
        """Fix the absolute norm limits from a first batch (no-op once fixed)."""
        if self.norm_factor is None:
            return
        special = self._special_mask(tokens)
        for key, a in acts.items():
            if key not in self.norm_threshold:
                norms = a.float().norm(dim=-1)[~special]
                if norms.numel():
                    self.norm_threshold[key] = float(self.norm_factor * norms.median())

    def _special_mask(self, tokens: Tensor) -> Tensor:
        if not self.special_ids:
            return torch.zeros_like(tokens, dtype=torch.bool)
        return torch.isin(tokens, torch.tensor(self.special_ids, device=tokens.device))

    def keep_mask(self, tokens: Tensor, acts: dict[str, Tensor]) -> Tensor:
        """Bool mask of tokens' shape: True where the position is kept."""
        keep = ~self._special_mask(tokens)
        for key, a in acts.items():
            limit = self.norm_threshold.get(key)
            if limit is not None:
                keep &= a.float().norm(dim=-1) <= limit
        return keep

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "Exclusion":
        return cls(**data) if data else cls(norm_factor=None)
