"""Score sanity on a planted feature: a latent that fires exactly on the word " dog" in real
tokenized text. The embedding scorer (the packaged MiniLM) and the detection and fuzzing scorers
(read by an ideal judge that applies the explanation's quoted word to the texts the scorer's
prompt shows) rank the true explanation high and a wrong one at or below chance; the contexts
drawn for them are what the sampling promises."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from saelab.interpret.explain import Sampling, Text, examples_for
from saelab.interpret.explain.classify import balanced_accuracy, parse_labels
from saelab.interpret.explain.detection import Detection
from saelab.interpret.explain.explainer import highlight, parse, prompt
from saelab.interpret.explain.fuzzing import Fuzzing

TRUE = 'The word "dog".'
WRONG = 'The word "budget".'
SUBJECTS = ["my neighbour", "the farmer", "a child", "the old man", "our teacher", "the doctor",
            "a young woman", "the captain", "his sister", "the baker"]
PLACES = ["in the park", "near the river", "at the market", "on the hill", "by the station"]


def sentences() -> list[str]:
    """Varied sentences, half of them with ' dog' somewhere, none with 'budget'."""
    out = []
    for i, who in enumerate(SUBJECTS):
        for j, where in enumerate(PLACES):
            if (i + j) % 2 == 0:
                out.append(f"Yesterday {who} walked a brown dog {where} and then went home to "
                           f"rest for the evening.")
            else:
                out.append(f"Yesterday {who} carried a heavy basket {where} and then went home "
                           f"to rest for the evening.")
    return out


class Planted(nn.Module):
    """A dictionary whose latent 0 fires (at 4) exactly on the token ' dog'; latent 1 on ' the'.
    Its input is the token id of each row, as a float [B, 1]."""

    def __init__(self, dog: int, the: int):
        super().__init__()
        self.dog, self.the, self.n_latents, self.d_in = dog, the, 3, 1
        self.W_dec = nn.Parameter(torch.eye(3))

    def encode(self, x):
        codes = torch.zeros(x.shape[0], 3)
        codes[:, 0] = (x[:, 0] == self.dog).float() * 4
        codes[:, 1] = (x[:, 0] == self.the).float() * 2
        return codes

    def decode(self, codes):
        return codes @ self.W_dec


@pytest.fixture(scope="module")
def planted_inputs():
    """The planted dictionary, its rows as batches, and the text behind them."""
    from saelab.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    ids = [tok(s, add_special_tokens=False).input_ids for s in sentences()]
    T = min(map(len, ids))
    tokens = torch.tensor([i[:T] for i in ids])  # [N, T]
    N = tokens.shape[0]
    ctx = torch.arange(N).repeat_interleave(T)
    pos = torch.arange(T).repeat(N)
    dog, the = tok(" dog").input_ids[0], tok(" the").input_ids[0]
    dictionary = Planted(dog, the)
    rows = tokens.flatten().float()[:, None]
    batches = [(rows[i:i + 64], torch.arange(i, min(i + 64, rows.shape[0])))
               for i in range(0, rows.shape[0], 64)]
    return dictionary, batches, Text(tokens, ctx, pos, tok)


@pytest.fixture(scope="module")
def planted(planted_inputs):
    dictionary, batches, text = planted_inputs
    sampling = Sampling(window=12, n_top=5, n_quantiles=2, n_test_per_quantile=4,
                        n_negatives=10, seed=0)
    (ex,) = examples_for(dictionary, batches, text, [0], sampling)
    return ex


class IdealJudge:
    """Reads the scorer's prompt as a model would: the quoted word of the explanation, the
    examples listed; answers 1 for an example that holds the word (detection) or whose marked
    tokens are the word (fuzzing, when the prompt speaks of marks)."""

    name = "ideal judge"

    def generate(self, messages, max_tokens=128, temperature=0.0):
        user = messages[-1]["content"]
        word = re.search(r'"([^"]+)"', user.split("\n")[0]).group(1)
        examples = re.findall(r"^Example \d+: (.*)$", user, flags=re.MULTILINE)
        marks = "marked" in messages[0]["content"]
        answers = []
        for ex in examples:
            if marks:
                marked = re.findall(r"<<(.*?)>>", ex)
                answers.append(int(bool(marked) and all(m.strip() == word for m in marked)))
            else:
                answers.append(int(re.search(rf"\b{word}\b", ex) is not None))
        return str(answers)


def test_contexts_drawn_are_activating_and_negatives_never_fire(planted):
    assert planted.fire_count == 25 and planted.max_activation == 4.0
    assert all(e.activating and " dog" in e.text for e in planted.explain + planted.test)
    assert planted.negatives and all(not e.activating and " dog" not in e.text
                                     for e in planted.negatives)
    explained = {tuple(e.tokens) for e in planted.explain}
    assert not explained & {tuple(e.tokens) for e in planted.test}  # held out from the explainer
    assert all(len(e.tokens) == 12 for e in planted.explain + planted.test + planted.negatives)


def test_marks_wrap_exactly_the_tokens_the_feature_fires_on(planted):
    marked = highlight(planted.explain[0])
    assert re.findall(r"<<(.*?)>>", marked) == [" dog"]
    user = prompt(planted.explain)[1]["content"]
    assert user.count("<< dog>>") == len(planted.explain) and "dog 10" in user


def test_embedding_scores_the_true_explanation_high_and_a_wrong_one_low(planted):
    from saelab.interpret.explain.embedding import Embedding, Encoder

    scorer = Embedding(Encoder.load())
    right, wrong = scorer.score(TRUE, planted), scorer.score(WRONG, planted)
    assert right >= 0.9, right
    assert wrong <= 0.7 and right - wrong >= 0.3, (right, wrong)


def test_detection_scores_the_true_explanation_high_and_a_wrong_one_at_chance(planted):
    scorer = Detection(IdealJudge(), per_prompt=5)
    assert scorer.score(TRUE, planted) == 1.0
    assert scorer.score(WRONG, planted) == 0.5  # says 0 to everything: chance


def test_fuzzing_scores_the_true_explanation_high_and_a_wrong_one_at_chance(planted):
    scorer = Fuzzing(IdealJudge(), per_prompt=4)
    assert scorer.score(TRUE, planted) == 1.0
    assert scorer.score(WRONG, planted) == 0.5


def test_unreadable_answers_are_left_unlabelled_not_guessed():
    assert parse_labels("[1, 0, 1]", 3) == [True, False, True]
    assert parse_labels("Example 1: 1\nExample 2: 0", 2) == [True, False]
    assert parse_labels("Example 1: 1\nExample 2: 0", 3) is None  # two answers, not three
    assert parse_labels("I think 1 and 0", 2) == [True, False]
    assert parse_labels("yes", 2) is None
    assert parse_labels("[1, 0, 1, 0, 0, 1, 0, 1", 3) == [True, False, True]  # runs on
    assert parse_labels("[1, 0", 3) is None  # stops short
    assert balanced_accuracy([True, None, False, None], [True, True, False, False]) == 1.0


def test_explanation_is_read_from_the_marked_line_or_the_first_sentence():
    assert parse("Thinking...\n[EXPLANATION]: The word <<dog>> in stories.") == \
        "The word dog in stories."
    assert parse("Mentions of animals. Also other things.") == "Mentions of animals."
    assert parse("   ") == ""
    rambling = parse("The feature of the feature" + " of the feature" * 40)
    assert rambling.endswith(" ...") and len(rambling.split()) == 41


def test_hard_negatives_come_from_where_the_nearest_feature_fires(planted_inputs):
    dictionary, batches, text = planted_inputs
    sampling = Sampling(window=12, n_top=5, n_quantiles=2, n_test_per_quantile=4,
                        n_negatives=6, negatives="hard", n_neighbours=1, seed=0)
    dictionary = Planted(dictionary.dog, dictionary.the)  # latent 1 (" the") nearest to 0
    dictionary.W_dec.data = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    (ex,) = examples_for(dictionary, batches, text, [0], sampling)
    assert len(ex.negatives) == 6 and all(e.kind == "hard" for e in ex.negatives)
    assert all(" the" in e.text and " dog" not in e.text for e in ex.negatives)


@pytest.mark.slow
def test_surprisal_prefers_the_true_explanation(planted):
    from saelab.interpret.explain import LocalClient
    from saelab.interpret.explain.surprisal import Surprisal

    lm = LocalClient.load("smollm2-135m")
    scorer = Surprisal(lm.model, lm.tokenizer)
    right, wrong = scorer.score(TRUE, planted), scorer.score(WRONG, planted)
    assert right > 0.7 and right > wrong + 0.2, (right, wrong)


def test_intervention_steers_the_output_and_scores_the_change(planted):
    from saelab.interpret.explain.intervention import Intervention
    from saelab.models import load_tokenizer
    from tests.conftest import tiny_llama

    tok = load_tokenizer("smollm2-135m")
    model = tiny_llama(vocab=len(tok), hidden=32, layers=2)

    class OnLayer0(nn.Module):  # a feature whose decoder direction is large along one axis
        n_latents, d_in = 2, 32

        def decode(self, codes):
            return codes @ torch.eye(2, 32) * 30.0

    scorer = Intervention(model, tok, "model.layers.0", OnLayer0(), prompts=["The cat"],
                          n_tokens=6, strength=1.0)
    value = scorer.score(TRUE, planted._replace(feature=0))
    assert scorer.clean[0] != scorer.steered(0, planted.max_activation)[0]
    assert math.isfinite(value)
