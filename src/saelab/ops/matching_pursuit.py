"""Greedy matching pursuit (Mallat and Zhang 1993) over the rows of a dictionary, without autograd.

Each step picks, for every input row, the atom best aligned with the row's residual, codes it
with the inner product of the unit atom and the residual, and subtracts that contribution, so
every later choice is conditioned on the earlier ones. Two selections:

- `absolute=True`: classic MP, the largest |inner product|, codes of either sign (ITDA's encoder,
  Leask et al. 2025);
- `absolute=False`: the largest inner product, codes clipped at zero (MP-SAE's, Costa et al. 2025).

The scores are inner products with the unit atoms U = W / |W|; the code returned for atom j is
a / |W_j| (a being the inner product with U_j), so `sparse_decode(values, indices, W)` rebuilds
the approximation whatever the atoms' norms. A zero atom scores zero and, if ever picked, gets a
zero code.

Cost: after the step that codes atom j with a, the scores lose a (U U^T)[j]; where the Gram matrix
is small enough and cheaper than the products it replaces (`use_gram`), each step costs
O(n_atoms) per row instead of a product with every atom. The codes themselves are computed from
the residual, not from the updated scores. Rows are independent, so all steps run on a block of
rows at a time (256 on the CPU, whose scores stay in cache); nothing of size [B, n_atoms] is held.

The pursuit of the MP-SAE (`saelab.dictionaries.mp`) and of ITDA: one implementation
for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saelab.ops.sparse import SparseCodes, linear

CHUNK_ROWS = 256
"""Rows pursued together on the CPU."""
GRAM_MAX = 1 << 28
"""Largest Gram matrix (entries) used to update the scores: 1 GiB in float32, 16,384 atoms.
Measured at 16,384 atoms, d 768, 4,096 rows and 16 steps (one thread): 9.3 s with the Gram
matrix against 20.3 s recomputing the scores, the same atoms and codes."""


def use_gram(rows: int, n_atoms: int, steps: int) -> bool:
    """Whether updating the scores through the atoms' Gram matrix (n_atoms^2 d once, then
    O(n_atoms) per row and step) is cheaper than recomputing them (O(n_atoms d) per row and
    step), and the Gram matrix at most `GRAM_MAX` entries."""
    return n_atoms * n_atoms <= GRAM_MAX and n_atoms < steps * rows


def argmax_rows(scores: Tensor, block: int = 64) -> Tensor:
    """scores.argmax(dim=1), the same index (first of the maxima), faster on the CPU: the
    maximum of each block of 64 columns (a vectorised amax), the first block holding the row's
    maximum, then the argmax inside that block (PyTorch's CPU argmax is a scalar loop)."""
    rows, n = scores.shape
    if n % block or n < 2 * block or scores.device.type != "cpu":
        return scores.argmax(dim=1)
    blocks = scores.view(rows, n // block, block)  # [rows, n / block, block]
    first = blocks.amax(dim=2).argmax(dim=1)  # [rows]: block of the first maximum
    inside = blocks.gather(1, first[:, None, None].expand(rows, 1, block)).squeeze(1)
    return first * block + inside.argmax(dim=1)


@torch.no_grad()
def matching_pursuit(x: Tensor, W: Tensor, steps: int, absolute: bool = False,
                     tol: float = 0.0, gram: bool | None = None) -> SparseCodes:
    """`steps` pursuit steps of every row of x [B, d] over the atoms W [n_atoms, d].

    Returns the chosen atoms and their codes, [B, steps] each, in the order chosen (an atom may
    be chosen twice: its codes then add up; a code is 0 where the row stopped or, with
    absolute=False, its best inner product was <= 0). `tol` > 0 stops a row once its residual
    norm is at most tol * |x|. `gram` forces the Gram update on or off (default `use_gram`).
    """
    inv_norm = W.norm(dim=1).clamp_min(1e-12).reciprocal()  # [n_atoms]
    U = W * inv_norm[:, None]  # [n_atoms, d] unit atoms (zero atoms stay zero)
    gram = use_gram(x.shape[0], W.shape[0], steps) if gram is None else gram
    H = linear(U, U) if gram else None  # [n_atoms, n_atoms]
    indices = torch.empty(x.shape[0], steps, dtype=torch.long, device=x.device)
    values = x.new_empty(x.shape[0], steps)
    block = CHUNK_ROWS if x.device.type == "cpu" else max(CHUNK_ROWS, GRAM_MAX // max(1, W.shape[0]))
    for start in range(0, x.shape[0], block):
        rows = slice(start, start + block)
        r = x[rows].clone()  # [c, d] residual of these rows
        floor = tol * r.norm(dim=1) if tol > 0 else None
        scores = linear(r, U)  # [c, n_atoms]
        for t in range(steps):
            if t > 0 and H is None:
                scores = linear(r, U)
            j = argmax_rows(scores.abs() if absolute else scores)  # [c]
            atom = F.embedding(j, U)  # [c, d]
            a = torch.linalg.vecdot(atom, r)  # [c]
            if not absolute:
                a.clamp_(min=0)
            if floor is not None:
                a.masked_fill_(r.norm(dim=1) <= floor, 0)
            r.addcmul_(a[:, None], atom, value=-1)
            if H is not None:
                scores.addcmul_(a[:, None], F.embedding(j, H), value=-1)
            indices[rows, t], values[rows, t] = j, a * inv_norm[j]  # code of W_j = a / |W_j|
    return SparseCodes(values, indices)
