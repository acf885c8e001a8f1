"""Helpers of the concept families' tests: random labelled token lists, and a forward counter
(to prove a refusal came before the model ran, or that families shared one pass)."""

from __future__ import annotations

import torch

from saelab.data.labelled import LabelledTexts


def labelled(n: int = 40, seed: int = 1) -> LabelledTexts:
    """n texts of 4-16 random token ids (vocabulary 100), labelled a, b, a, b, ..."""
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(2, 100, (int(k),), generator=g).tolist()
           for k in torch.randint(4, 17, (n,), generator=g)]
    return LabelledTexts([f"text {i}" for i in range(n)], ["ab"[i % 2] for i in range(n)],
                         tokens=ids)


class Counted:
    """Counts forwards of a module while in a `with` block."""

    def __init__(self, module):
        self.module, self.count = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(lambda *_: self.bump())
        return self

    def bump(self):
        self.count += 1

    def __exit__(self, *exc):
        self.handle.remove()
