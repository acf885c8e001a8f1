"""Embedding documents through a model: the planted latent fires where its token is, pooling,
padding, the first position, reuse of saved embeddings, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from saelab.analyse import EmbedOptions, Embeddings, Session, diff, embed_documents
from saelab.data import Document
from saelab.errors import ConfigError
from tests.analyse.conftest import HOOKPOINT

CAT = [Document(f"Look, the cat number {i} sat on the mat.", f"a{i}") for i in range(30)]
DOG = [Document(f"Look, the dog number {i} sat on the mat today.", f"b{i}") for i in range(30)]


def test_planted_latent_fires_exactly_in_the_documents_with_its_token(tiny, planted_sae) -> None:
    emb = embed_documents(planted_sae, tiny, CAT[:5] + DOG[:5], HOOKPOINT)
    present = emb.active().toarray()
    assert present[:5, 0].all() and not present[5:, 0].any()
    assert not present[:, 1].any()
    assert "«cat»" in emb.excerpt(0, 0) or "« cat»" in emb.excerpt(0, 0)


def test_diff_through_the_model_finds_the_planted_latent(tiny, planted_sae) -> None:
    a = embed_documents(planted_sae, tiny, CAT, HOOKPOINT)
    b = embed_documents(planted_sae, tiny, DOG, HOOKPOINT)
    result = diff(a, b)
    assert [r.latent for r in result.more_in_a] == [0] and result.more_in_a[0].freq_a == 1.0
    assert result.more_in_a[0].q_value < 1e-10 and result.more_in_b == []


def test_padding_in_a_batch_leaves_a_document_s_row_unchanged(tiny) -> None:
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model, n_latents=64, k=4, seed=1)
    short, long = Document("A short one.", "s"), Document("A much longer document " * 6, "l")
    alone = embed_documents(sae, tiny, [short], "model.layers.1", batch_size=1)
    batched = embed_documents(sae, tiny, [long, short], "model.layers.1", batch_size=2)
    np.testing.assert_allclose(alone.matrix().toarray()[0], batched.matrix().toarray()[1],
                               rtol=1e-5, atol=1e-6)


def test_mean_pooling_has_the_support_of_max_and_smaller_values(tiny) -> None:
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model, n_latents=64, k=4, seed=1)
    docs = CAT[:4]
    top = embed_documents(sae, tiny, docs, "model.layers.1").matrix().toarray()
    mean = embed_documents(sae, tiny, docs, "model.layers.1", pooling="mean").matrix().toarray()
    assert ((top > 0) == (mean > 0)).all() and (mean <= top + 1e-6).all()
    assert (mean < top - 1e-6).any()


def test_the_first_position_is_left_out(tiny) -> None:
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model, n_latents=64, k=4, seed=1)
    emb = embed_documents(sae, tiny, [Document("one two three four", "x")], "model.layers.1")
    n = len(tiny.tokenizer("one two three four")["input_ids"])
    assert emb.n_tokens_N[0] == n - 1


def test_session_saves_beside_the_corpus_and_reuses(tiny, planted_sae, tmp_path,
                                                    monkeypatch) -> None:
    corpus = tmp_path / "cats.txt"
    corpus.write_text("\n\n".join(d.text for d in CAT[:6]))
    session = Session(planted_sae, EmbedOptions(progress=False))
    emb, folder, reused = session.embeddings(str(corpus))
    assert not reused and folder.parent == tmp_path / "cats.txt.embed"
    assert Embeddings.load(folder).active().toarray()[:, 0].all()
    again = Session(planted_sae, EmbedOptions(progress=False))
    monkeypatch.setattr(type(again), "lm", property(lambda s: pytest.fail("model loaded")))
    _, folder2, reused2 = again.embeddings(str(corpus))
    assert reused2 and folder2 == folder
    _, _, from_folder = again.embeddings(str(folder))  # a folder of embeddings is read as such
    assert from_folder
    monkeypatch.undo()
    corpus.write_text(corpus.read_text() + "\n\nA dog.")  # an edited corpus is embedded again
    emb3, folder3, reused3 = Session(planted_sae, EmbedOptions(progress=False)).embeddings(
        str(corpus))
    assert not reused3 and folder3 == folder and len(emb3) == 7


def test_a_dictionary_of_another_width_is_refused(tiny) -> None:
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model + 1, n_latents=8, k=2)
    with pytest.raises(ConfigError, match="another model or hookpoint"):
        embed_documents(sae, tiny, CAT[:2], "model.layers.1")


def test_a_model_other_than_the_dictionary_s_own_is_refused(planted_sae) -> None:
    with pytest.raises(ConfigError, match="trained on model .*allow-mismatch"):
        Session(planted_sae, EmbedOptions(model="smollm2-135m"))


def test_a_hookpoint_the_model_lacks_is_refused(tiny, planted_sae) -> None:
    with pytest.raises(ConfigError, match="no module of the model matches"):
        embed_documents(planted_sae, tiny, CAT[:2], "model.layers.99")


def test_a_hookpoint_other_than_the_dictionary_s_own_is_refused_unless_allowed(planted_sae
                                                                              ) -> None:
    with pytest.raises(ConfigError, match="trained on hookpoint .*allow-mismatch"):
        Session(planted_sae, EmbedOptions(hookpoint="model.layers.0"))
    allowed = Session(planted_sae, EmbedOptions(hookpoint="model.layers.0", allow_mismatch=True))
    assert allowed.hookpoint == "model.layers.0"


def test_an_excerpt_shows_a_marked_line_break() -> None:
    from tests.analyse.synthetic import embeddings_of

    emb = embeddings_of(np.ones((1, 1), bool))
    emb.documents[0] = emb.documents[0]._replace(text="AB\nCD")
    emb.spans_Z2[0] = (2, 3)
    assert emb.excerpt(0, 0) == "AB«⏎»CD"


def test_a_packaged_corpus_is_saved_in_the_cache_keyed_by_dictionary_and_settings(
        planted_sae, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    session = Session(planted_sae, EmbedOptions(limit=50, pooling="mean"))
    folder = session.location("bible")
    assert folder.parent == tmp_path / "cache" / "embed" / "bible"
    assert folder.name == f"{session.fingerprint[:12]}-mean-t128-n50-s0"
