"""Pooled activations of labelled texts: the model runs on each text, the activation at the
dictionary's hookpoint is read at every token, and both it and the dictionary's codes are
averaged over the text's tokens, giving one raw vector [d_in] and one code vector [n_latents]
per text. This is what the concept families (`sparse_probing`, `tpp`) probe.

As in SAEBench (`get_all_llm_activations`, `create_meaned_model_activations` and
`get_sae_meaned_activations` in `sae_bench/sae_bench_utils/activation_collection.py`,
github.com/adamkarvonen/SAEBench): texts are cut to their first 128 tokens, the codes are those
of each token, averaged (not the codes of the averaged activation), and the BOS / padding
positions are left out of the average. Here the first position is always left out, whether or
not the tokenizer put a BOS token there (SmolLM2's adds none, and its first position carries an
activation hundreds of times larger than the rest, as a BOS does), and so are the positions the
evaluation's exclusion rule drops (special tokens, rows above the norm limit the dictionary was
trained with). A text left with no position (a one-token text) is dropped and counted.

Families call `labelled_for(context)` in their `check` (it reads and tokenizes the labels before
any work, refusing what does not fit) and `pooled_for(context)` in their `run`; both keep their
result for the one evaluation, so that `sparse_probing` and `tpp` asked for together run the
model once.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saelab.capture import Capture, resolve
from saelab.capture.exclude import Exclusion
from saelab.data.labelled import LabelledTexts, load_labelled
from saelab.errors import ConfigError, DataError
from saelab.evaluate._base import Context, Family

log = logging.getLogger(__name__)

MAX_TEXTS = 8192
"""Texts pooled at most (a seeded random sample of the classes' texts beyond it, each class
keeping its share): the pooled codes take MAX_TEXTS x n_latents floats (1.2 GB at 36,864
latents; 150 MB at 4,608)."""
BATCH_TEXTS = 16
"""Texts per model forward (texts of similar length are batched together)."""
ROWS_PER_ENCODE = 4096
"""Token rows the dictionary encodes at once."""


class Pooled(NamedTuple):
    """Per-text averages over the kept token positions."""

    raw: Tensor
    """The hookpoint's activation averaged over each text's kept positions [N, d_in]."""
    codes: Tensor
    """The dictionary's codes of each kept position, averaged per text [N, n_latents]."""
    positions: Tensor
    """Positions averaged per text [N] (int64; 0 where none was kept)."""


LABELS_HINT = ("tokenize the labelled texts yourself: labels=texts.tokenize(tokenizer), with "
               "texts = saelab.data.labelled.load_labelled(...)")


def tokenizer_for(model: nn.Module, needs: str = "the labelled texts need",
                  hint: str = LABELS_HINT) -> Any:
    """The model's tokenizer: `model.tokenizer` when set, else the one saved with it (read from
    its `name_or_path`: a folder or Hub name); a ConfigError otherwise, saying who `needs` it and
    ending with `hint` (how to do without)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        return tokenizer
    from saelab.models import load_tokenizer

    name = getattr(model, "name_or_path", None) or getattr(
        getattr(model, "config", None), "name_or_path", None)
    if not name:
        raise ConfigError(f"{needs} the model's tokenizer, and this {type(model).__name__} does "
                          f"not say where it was loaded from: {hint}")
    try:
        return load_tokenizer(str(name))
    except Exception as e:  # noqa: BLE001 - any failure of the lookup gets the same advice
        raise ConfigError(f"cannot load the tokenizer of the model ({name}): {e}. "
                          f"Or {hint}") from None


_LABELLED: "weakref.WeakKeyDictionary[Context, LabelledTexts]" = weakref.WeakKeyDictionary()
_POOLED: "weakref.WeakKeyDictionary[Context, tuple[LabelledTexts, Pooled]]" = \
    weakref.WeakKeyDictionary()


def labelled_for(context: Context, family: str) -> LabelledTexts:
    """The context's labels as tokenized LabelledTexts (read from a file or name when given
    as one, tokenized with the model's tokenizer unless they carry tokens), checked: at least two
    classes with enough texts each. Refuses (ConfigError / DataError naming `family`) before any
    work; kept for the evaluation."""
    if context in _LABELLED:
        return _LABELLED[context]
    labels = load_labelled(context.labels)
    if len(labels.classes) < 2:
        dropped = f" (dropped for too few texts: {labels.dropped})" if labels.dropped else ""
        raise DataError(f"{family}: the labelled texts{_where(labels)} hold "
                        f"{len(labels.classes)} class(es){dropped}; probing needs at least two")
    if context.hookpoint is None:
        raise ConfigError(f"{family}: pooling the labelled texts' activations needs the "
                          f"hookpoint the dictionary reads: pass hookpoint")
    if labels.tokens is None:
        labels = labels.tokenize(tokenizer_for(context.model))
    _LABELLED[context] = labels
    return labels


def _where(labels: LabelledTexts) -> str:
    return f" ({labels.source})" if labels.source else ""


def pooled_for(context: Context, family: str) -> tuple[LabelledTexts, Pooled]:
    """The labelled texts and their pooled activations for this evaluation (computed once, shared
    by the families that ask): at most MAX_TEXTS texts, those left without a position dropped."""
    if context in _POOLED:
        return _POOLED[context]
    labels = labelled_for(context, family)
    if len(labels) > MAX_TEXTS:
        log.warning("%s: %d labelled texts, keeping a random %d (MAX_TEXTS)", family,
                    len(labels), MAX_TEXTS)
        g = torch.Generator().manual_seed(0 if context.seed is None else context.seed)
        labels = labels.subset(sorted(torch.randperm(len(labels), generator=g)[:MAX_TEXTS]
                                      .tolist()))
    pooled = pooled_activations(context.model, labels.tokens, context.hookpoint,
                                context.dictionary, exclusion=context.exclusion,
                                progress=context.progress, desc=family)
    empty = pooled.positions == 0
    if empty.any():
        log.warning("%s: %d labelled texts have no token left to average (one-token texts); "
                    "dropped", family, int(empty.sum()))
        keep = (~empty).nonzero()[:, 0]
        labels = labels.subset(keep.tolist())
        pooled = Pooled(*(t[keep] for t in pooled))
    _POOLED[context] = labels, pooled
    return labels, pooled


@torch.no_grad()
def pooled_activations(model: nn.Module, tokens: list[list[int]], hookpoint: str, dictionary,
                       exclusion: Exclusion | None = None, pad_id: int = 0,
                       batch_texts: int = BATCH_TEXTS, progress: bool = False,
                       desc: str = "pooled activations") -> Pooled:
    """Run `model` on each token list (right-padded batches of similar lengths, with an attention
    mask), read the activation at `hookpoint` (one module), and average it and the dictionary's
    codes over each text's kept positions: not the first, not padding, not what `exclusion`
    drops. Returns `Pooled` in the order of `tokens`."""
    hps = resolve(model, [hookpoint])
    if len(hps) != 1:
        raise ConfigError(f"pooling reads one module, but hookpoint {hookpoint!r} matches "
                          f"{len(hps)}")
    key, n = hps[0].key, len(tokens)
    device = next(model.parameters()).device
    d_device = next(dictionary.parameters(), torch.empty(0)).device
    raw = torch.zeros(n, dictionary.d_in)
    codes = torch.zeros(n, dictionary.n_latents)
    positions = torch.zeros(n, dtype=torch.long)
    order = sorted(range(n), key=lambda i: len(tokens[i]))
    batches = [order[i:i + batch_texts] for i in range(0, n, batch_texts)]
    with Capture(model, hps) as cap:
        for batch in tqdm(batches, desc=desc, disable=not progress):
            ids, mask = _pad([tokens[i] for i in batch], pad_id)  # [B, T] each
            acts = cap.run(input_ids=ids.to(device), attention_mask=mask.to(device))[key]
            keep = mask.clone()
            keep[:, 0] = False
            if exclusion is not None:
                keep &= exclusion.keep_mask(ids.to(acts.device), {key: acts}).cpu()
            rows = acts[keep.to(acts.device)].float().to(d_device)  # [M, d_in], kept positions
            owner = torch.tensor(batch).repeat_interleave(keep.sum(1))  # text of each row [M]
            raw.index_add_(0, owner, rows.cpu())
            for start in range(0, len(rows), ROWS_PER_ENCODE):
                chunk = rows[start:start + ROWS_PER_ENCODE]
                codes.index_add_(0, owner[start:start + ROWS_PER_ENCODE],
                                 dictionary(chunk).codes.float().cpu())
            positions.index_add_(0, owner, torch.ones_like(owner))
    scale = positions.clamp_min(1)[:, None].float()
    return Pooled(raw / scale, codes / scale, positions)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids [B, T] and the mask of real tokens [B, T] (bool)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    return ids, mask


class ConceptFamily(Family):
    """Base of the families that probe concepts on labelled texts pooled per text (fms,
    separability, sparse_probing, tpp): they need the model and the labels, refuse a dictionary
    without latents and labels that do not fit before any work, and read their inputs with
    `inputs()`."""

    needs = frozenset({"model", "labels"})

    @classmethod
    def check(cls, context: Context) -> None:
        if context.dictionary.n_latents < 1:
            raise ConfigError(f"{cls.name}: the dictionary has no latents")
        labelled_for(context, cls.name)

    def inputs(self) -> tuple[LabelledTexts, Pooled, Tensor, int]:
        """The labelled texts, their pooled activations and codes (shared by the families of
        one evaluation), the class index of each text [N], and the seed (0 when none)."""
        labels, pooled = pooled_for(self.context, self.name)
        seed = 0 if self.context.seed is None else self.context.seed
        return labels, pooled, labels.targets(), seed
