"""One dictionary, the model it reads, and the corpora embedded with it: what `saelab embed`
and `saelab diff` share. Embeddings are saved beside the corpus (or in a chosen folder, or for a
packaged corpus in saelab's cache) and reused when a later command asks for the same corpus
with the same dictionary and settings; the model is loaded only when something has to be
embedded.

    >>> session = Session("runs/l15/sae", EmbedOptions(limit=500))
    >>> emb, folder, reused = session.embeddings("bible")
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from saelab._paths import cache_dir
from saelab.analyse.corpora import PACKAGED, read_corpus
from saelab.analyse.embed import BATCH_SIZE, MAX_TOKENS, embed_documents, fingerprint
from saelab.analyse.embeddings import Embeddings, is_embeddings
from saelab.config import option, required
from saelab.errors import ConfigError

log = logging.getLogger(__name__)

MATCHED = ("dictionary", "model", "hookpoint", "pooling", "max_tokens", "corpus", "limit",
           "seed", "documents_sha256")
"""Settings two saved embeddings must share for one to stand for the other."""


@dataclass(kw_only=True)
class EmbedOptions:
    """How documents are embedded (the options `saelab embed` and `saelab diff` share)."""

    model: str | None = option(None, "Model to run: a packaged alias, folder or Hub name "
                                     "(default: the model the dictionary was trained on, from "
                                     "its cfg.json).")
    hookpoint: str | None = option(None, "Hookpoint to read (default: the dictionary's own).")
    pooling: Literal["max", "mean"] = option("max", "Pool each latent's codes over a "
                                                    "document's tokens by their max or mean.")
    max_tokens: int = option(MAX_TOKENS, "Tokens of each document read at most (the first).")
    limit: int | None = option(None, "Documents per corpus at most: a random sample (--seed), "
                                     "kept in corpus order.")
    seed: int = option(0, "Seed of the --limit sample.")
    batch_size: int = option(BATCH_SIZE, "Documents per model forward.")
    device: str = option("cpu", "Device of the model and the dictionary (cpu, cuda, ...).")
    recompute: bool = option(False, "Embed again even when saved embeddings match.")
    allow_mismatch: bool = option(False, "Run a model or read a hookpoint other than the ones "
                                         "the dictionary records (widths must still fit).")
    progress: bool = option(True, "Show a progress bar while embedding.")


@dataclass(kw_only=True)
class OnDictionary(EmbedOptions):
    """A command over one dictionary (its first positional argument)."""

    dictionary: str = required("Dictionary folder (any known format) or hf://owner/repo/path.",
                               positional=True)


@dataclass(kw_only=True)
class OnCorpus(OnDictionary):
    """A command over one dictionary and one corpus (embedded as by `saelab embed`)."""

    corpus: str = required("Corpus (as for `saelab embed`), or a folder of embeddings it "
                           "wrote.", positional=True)


class Session:
    """A dictionary, loaded once, and the model it reads, loaded on first need."""

    def __init__(self, dictionary: str | Any, options: EmbedOptions | None = None):
        from saelab.io import load

        self.options = options or EmbedOptions()
        self.dictionary = load(dictionary) if isinstance(dictionary, (str, Path)) else dictionary
        self.dictionary.eval().to(self.options.device)
        provenance = getattr(self.dictionary, "provenance", {})
        self.model_name = self.options.model or provenance.get("model")
        if not self.model_name:
            raise ConfigError("the dictionary records no model: name the one to run with "
                              "--model")
        self.hookpoint = self.options.hookpoint or provenance.get("hookpoint")
        if not self.hookpoint:
            raise ConfigError("the dictionary records no hookpoint: name the one it reads with "
                              "--hookpoint")
        _check_model(provenance, self.model_name, self.options.allow_mismatch)
        _check_hookpoint(provenance, self.hookpoint, self.options.allow_mismatch)
        self.fingerprint = fingerprint(self.dictionary)
        self._lm = None

    @property
    def lm(self):
        """The model (`saelab.models.LoadedModel`), loaded on first use."""
        if self._lm is None:
            from saelab.models import load

            self._lm = load(self.model_name)
            self._lm.model.to(self.options.device)
        return self._lm

    def settings(self, corpus: str) -> dict[str, Any]:
        o = self.options
        return {"dictionary": self.fingerprint, "model": self.model_name,
                "hookpoint": self.hookpoint, "pooling": o.pooling, "max_tokens": o.max_tokens,
                "corpus": corpus, "limit": o.limit, "seed": o.seed}

    def location(self, corpus: str) -> Path:
        """Where the embeddings of `corpus` go by default: beside a file or folder
        (`NAME.embed/KEY`), else (a packaged corpus, a folder that cannot be written) in
        saelab's cache (`embed/NAME/KEY`); KEY names the dictionary (the start of its
        fingerprint) and the settings."""
        o = self.options
        key = (f"{self.fingerprint[:12]}-{o.pooling}-t{o.max_tokens}"
               + (f"-n{o.limit}-s{o.seed}" if o.limit else ""))
        path = Path(corpus).expanduser().resolve()
        local = corpus not in PACKAGED and path.exists()  # read_corpus puts names first
        if local and os.access(path.parent, os.W_OK):
            return path.parent / f"{path.name}.embed" / key
        name = path.name if local else corpus.replace("/", "_").replace(":", "_")
        return cache_dir() / "embed" / name / key

    def embeddings(self, corpus: str, out: str | Path | None = None
                   ) -> tuple[Embeddings, Path, bool]:
        """(embeddings, their folder, whether they were reused) of `corpus`: a folder of saved
        embeddings is read (and must come from this dictionary); otherwise saved embeddings
        with the same settings and the same documents (their texts' sha256: an edited file is
        embedded again) are reused unless `recompute`; otherwise the documents are embedded and
        saved in `out` (default: `location`)."""
        if is_embeddings(corpus):
            emb = Embeddings.load(corpus)
            self._check_same_dictionary(emb, corpus)
            return emb, Path(corpus), True
        folder = Path(out) if out else self.location(corpus)
        documents = read_corpus(corpus, self.options.limit, self.options.seed).documents
        wanted = {**self.settings(corpus), "documents_sha256": documents_digest(documents)}
        if is_embeddings(folder) and not self.options.recompute:
            emb = Embeddings.load(folder)
            if all(emb.settings.get(k) == wanted[k] for k in MATCHED):
                log.info("reusing the embeddings of %s in %s", corpus, folder)
                return emb, folder, True
        log.info("embedding %d documents of %s", len(documents), corpus)
        emb = embed_documents(self.dictionary, self.lm, documents, self.hookpoint,
                              pooling=self.options.pooling, max_tokens=self.options.max_tokens,
                              batch_size=self.options.batch_size,
                              progress=self.options.progress, settings=wanted)
        return emb, emb.save(folder), False

    def _check_same_dictionary(self, emb: Embeddings, where: str) -> None:
        if emb.settings.get("dictionary") != self.fingerprint:
            raise ConfigError(f"the embeddings in {where} were made with another dictionary "
                              f"(fingerprint {str(emb.settings.get('dictionary'))[:12]}, this "
                              f"one is {self.fingerprint[:12]}): embed the corpus again with "
                              f"this dictionary")


def documents_digest(documents: list) -> str:
    """sha256 (hex) of the documents' texts, in order."""
    digest = hashlib.sha256()
    for d in documents:
        digest.update(d.text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _check_model(provenance: dict, model: str, allow: bool) -> None:
    """A model other than the dictionary's own is refused unless `allow` (then a warning)."""
    from saelab.models import hub_id

    trained = {provenance.get("model"), provenance.get("model_hub_id")} - {None}
    if not trained or {model, hub_id(model)} & trained:
        return
    message = (f"the dictionary was trained on model {provenance.get('model')!r}, not "
               f"{model!r}")
    if not allow:
        raise ConfigError(f"{message}: leave --model out to run its own, or pass "
                          f"--allow-mismatch to run this one on purpose")
    log.warning("%s (allowed)", message)


def _check_hookpoint(provenance: dict, hookpoint: str, allow: bool) -> None:
    """A hookpoint other than the dictionary's own is refused unless `allow` (then a warning):
    another layer of the same width would run, and every figure would mean nothing."""
    from saelab.capture import Hookpoint

    trained = provenance.get("hookpoint")
    if not trained or Hookpoint.parse(trained).key == Hookpoint.parse(hookpoint).key:
        return
    message = f"the dictionary was trained on hookpoint {trained!r}, not {hookpoint!r}"
    if not allow:
        raise ConfigError(f"{message}: leave --hookpoint out to read its own, or pass "
                          f"--allow-mismatch to read this one on purpose")
    log.warning("%s (allowed)", message)


def options_of(config: Any) -> EmbedOptions:
    """The EmbedOptions fields of a command's config (a subclass of EmbedOptions)."""
    names = set(asdict(EmbedOptions()))
    return EmbedOptions(**{k: v for k, v in asdict(config).items() if k in names})
