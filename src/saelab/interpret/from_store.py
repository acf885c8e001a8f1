"""A dictionary's dashboard over an activation store: one streaming pass for the top examples,
then the static HTML pages, with the contexts the store keeps as the text shown."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from saelab.interpret.dashboard import write_dashboard
from saelab.interpret.hookpoint import check_hookpoint
from saelab.interpret.top_examples import collect_top_examples
from saelab.store import ActivationStore


def dashboard_from_store(dictionary, store: ActivationStore | str | os.PathLike,
                         out: str | os.PathLike, *, tokenizer: Any = None,
                         unembed: Tensor | None = None, hookpoint: str | None = None,
                         allow_hookpoint_mismatch: bool = False,
                         allow_incomplete_store: bool = False, n_features: int = 200,
                         n_top: int = 20, extra: dict | None = None, title: str | None = None,
                         progress: bool = True, dictionary_path: str | os.PathLike | None = None
                         ) -> Path:
    """Top examples of `dictionary` over `store` and its dashboard in the folder `out`.

    The store hookpoint read is `check_hookpoint(dictionary, store.hookpoints, hookpoint,
    allow_hookpoint_mismatch)`: the one the dictionary was trained on, and a store that lacks it
    is refused unless the mismatch is allowed, and so is a store whose capture has not finished
    unless `allow_incomplete_store`. `tokenizer` (default: the store model's) renders
    the tokens; `unembed` [vocab, d_out] adds each feature's logit effect. Two more passes over
    the store write the feature browser's data (saelab.interpret.feature_data); with
    `dictionary_path`, `saelab view` can also run the store's model on a prompt (leaving out the
positions the store's exclusion rule dropped, as training did). A store of images gets the
    image dashboard instead (saelab.interpret.image_dashboard). Returns `out`.
    """
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    store.require_complete(allow_incomplete_store, "a dashboard")
    key = check_hookpoint(dictionary, store.hookpoints, hookpoint, allow_hookpoint_mismatch)
    if "images" in store.manifest:  # a vision model's store: top images with patch heat maps
        from saelab.interpret.image_dashboard import image_dashboard

        return image_dashboard(dictionary, store, out, hookpoint=key, n_features=n_features,
                               n_top=n_top, title=title, extra=extra, progress=progress)
    if tokenizer is None:
        from saelab.models import load_tokenizer

        tokenizer = load_tokenizer(store.model)
    top = collect_top_examples(dictionary, store.iter_rows(key), n_top=n_top, progress=progress)
    rows = store.row_index()
    title = title or f"saelab: {dictionary.architecture} on {store.model} {key}"
    return write_dashboard(Path(out), dictionary, top, store.contexts()["tokens"], rows["ctx"],
                           rows["pos"], tokenizer, unembed=unembed, n_features=n_features,
                           title=title, extra=extra, batches=lambda: tqdm(store.iter_rows(key), disable=not progress,
                                                desc="browser data", unit="batch", leave=False),
                           sources={"model": store.model, "hookpoint": key,
                                    "store": str(store.path.resolve()),
                                    "exclusion": store.manifest.get("exclusion"),
                                    "dictionary": (str(Path(dictionary_path).resolve())
                                                   if dictionary_path else None)})
