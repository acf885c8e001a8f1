"""RISE pieces on a tiny random Llama with SmolLM2's tokenizer (and chat template): problems,
step behaviours, traces and their step vectors, clusters of decoder directions, the direction
edit, and steering at strength 0 giving the clean chains exactly."""

from __future__ import annotations

import pytest
import torch

from saelab.capture import capture
from saelab.errors import ConfigError
from saelab.steer.reasoning import (Behaviour, cluster_directions, describe_clusters,
                                    direction_edit, measure, summarise)
from saelab.steer.reasoning_problems import (Problem, behaviour, final_number, is_correct,
                                             word_problems)
from saelab.steer.reasoning_steps import (StepVectors, chat_prompt_ids, generate_traces,
                                          step_vectors, trace_of)

HOOKPOINT = "model.layers.1"


@pytest.fixture(scope="module")
def tiny(model_dir):
    from saelab.models import load

    return load(str(model_dir))


def test_problems_are_deterministic_and_their_answers_follow_the_numbers() -> None:
    first, again = word_problems(10, seed=3), word_problems(10, seed=3)
    assert first == again and first != word_problems(10, seed=4)
    assert {p.kind for p in first} == {"add_sub", "times", "change", "share", "two_step"}
    times = next(p for p in first if p.kind == "times")
    a, b = [int(w) for w in times.question.split() if w.isdigit()][:2]
    assert times.answer == a * b
    with pytest.raises(ConfigError, match="at least one problem"):
        word_problems(0)


def test_the_last_number_is_the_answer() -> None:
    assert final_number("So 3 + 4 = 7, and 1,200 in all.") == 1200
    assert is_correct("12 - 5 = 7. The answer is 7.", 7)
    assert not is_correct("The answer is 8.", 7) and not is_correct("no number", 7)


@pytest.mark.parametrize("step, kind", [
    ("Wait, let me check that again.", "reflection"), ("Now we verify: 3 + 4 = 7.", "reflection"),
    ("Therefore the answer is 7.", "conclusion"), ("3 + 4 = 7 apples.", "computation"),
    ("First, we need to find the total.", "planning"), ("Tom has 3 apples.", "other")])
def test_each_step_gets_the_first_matching_behaviour(step: str, kind: str) -> None:
    assert behaviour(step) == kind


def test_a_trace_splits_generated_ids_into_steps_with_their_tokens(tiny) -> None:
    tok = tiny.tokenizer
    ids = tok("First add 3 and 4. Wait, check it.\nSo it is 7.",
              add_special_tokens=False)["input_ids"]
    trace = trace_of(tok, Problem("q", 7, "add_sub"), [1, 2], ids)
    assert trace.step_texts == ["First add 3 and 4.", "Wait, check it.", "So it is 7."]
    for (a, b), text in zip(trace.ranges, trace.step_texts):
        assert tok.decode(ids[a:b]).strip() == text


def test_step_vectors_are_the_mean_activation_of_each_steps_tokens(tiny) -> None:
    problems = word_problems(3, seed=0)
    traces = generate_traces(tiny, problems, max_new_tokens=12, batch_size=2)
    assert traces == generate_traces(tiny, problems, max_new_tokens=12, batch_size=2)
    steps = step_vectors(tiny, traces, HOOKPOINT)
    row = 0
    for t, trace in enumerate(traces):
        ids = torch.tensor([trace.prompt_ids + trace.ids])
        act_TD = capture(tiny.model, [HOOKPOINT], ids)[HOOKPOINT][0]
        n = len(trace.prompt_ids)
        for i, (a, b) in enumerate(trace.ranges):
            if b <= a:
                continue
            assert (steps.trace[row], steps.position[row]) == (t, i)
            torch.testing.assert_close(steps.vectors_ND[row], act_TD[n + a:n + b].mean(0))
            row += 1
    assert row == len(steps.vectors_ND) > 0


def test_the_chat_prompt_needs_a_template(tiny) -> None:
    class Plain:
        chat_template = None

    with pytest.raises(ConfigError, match="chat template"):
        chat_prompt_ids(Plain(), "2 + 2?")
    ids = chat_prompt_ids(tiny.tokenizer, "What is 2 + 2?")
    assert "What is 2 + 2?" in tiny.tokenizer.decode(ids)


def _grouped_sae(d: int = 32):
    """A TopK SAE whose 8 decoder directions lie in two tight groups (0-3 near e0, 4-7 near
    e1), with encoder rows equal to the decoder rows."""
    import saelab

    sae = saelab.create("topk", d_in=d, n_latents=8, k=4, seed=0)
    g = torch.Generator().manual_seed(0)
    rows = torch.zeros(8, d)
    rows[:4, 0], rows[4:, 1] = 1.0, 1.0
    rows += 0.05 * torch.randn(8, d, generator=g)
    rows /= rows.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(rows)
        sae.W_enc.copy_(rows)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_clusters_of_decoder_directions_recover_the_groups_and_name_them() -> None:
    sae = _grouped_sae()
    x = torch.zeros(6, 32)
    x[:3, 0], x[3:, 1] = 5.0, 5.0  # three steps along each group
    texts = ["Wait, let me check.", "Let me verify it.", "Hmm, check again.",
             "Tom has 3.", "Anna has 4.", "Ben has 5."]
    steps = StepVectors(x, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], texts,
                        [behaviour(t) for t in texts])
    groups = cluster_directions(sae, x, n_clusters=2, min_steps=1)
    assert sorted(map(sorted, groups)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    named = {c.label: c for c in describe_clusters(sae, steps, groups)}
    assert named["reflection"].steps == 3 and named["reflection"].shares["reflection"] == 1.0
    assert set(named["reflection"].latents) == {0, 1, 2, 3}
    assert named["other"].enrichment["other"] == 2.0
    with pytest.raises(ConfigError, match="n_clusters must lie between 2 and the 8"):
        cluster_directions(sae, x, n_clusters=9, min_steps=1)


def test_a_direction_edit_adds_strength_times_the_groups_unit_mean_direction() -> None:
    sae = _grouped_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, 8)[:, None])  # atoms of unequal norms
    edit = direction_edit(sae, [0, 1, 2, 3], strength=-7.0)
    codes = torch.rand(5, 8)
    delta = sae.decode(edit.apply(codes)) - sae.decode(codes)
    unit = (sae.W_dec[:4] / sae.W_dec[:4].norm(dim=1, keepdim=True)).sum(0)
    expected = -7.0 * unit / unit.norm()
    torch.testing.assert_close(delta, expected.expand(5, -1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="out of range"):
        direction_edit(sae, [8], 1.0)


def test_steering_at_strength_zero_gives_the_clean_chains_exactly(tiny) -> None:
    import saelab

    sae = saelab.create("topk", d_in=tiny.d_model, n_latents=16, k=2, seed=0)
    sae.provenance.update({"hookpoint": HOOKPOINT})
    problems = word_problems(2, seed=0)
    clean, zero, pushed = measure(tiny, sae, problems, {
        "clean": [], "zero": [direction_edit(sae, [0, 1], 0.0)],
        "pushed": [direction_edit(sae, [0, 1], 50.0)]}, max_new_tokens=10)
    assert isinstance(clean, Behaviour) and clean.name == "clean"
    assert [t.ids for t in zero.traces] == [t.ids for t in clean.traces]
    assert [t.ids for t in pushed.traces] != [t.ids for t in clean.traces]


def test_summarise_counts_behaviours_per_step_and_per_chain(tiny) -> None:
    tok = tiny.tokenizer
    traces = [trace_of(tok, Problem("q", 7, "add_sub"), [1],
                       tok(text, add_special_tokens=False)["input_ids"])
              for text in ("Wait, check. So it is 7.", "Tom has 3. It is 8.")]
    result = summarise("x", traces, [2.0, 8.0])
    assert result.steps == 2.0 and result.per_trace["reflection"] == 0.5
    assert result.rates["reflection"] == 0.25 and result.accuracy == 0.5
    assert result.perplexity == pytest.approx(4.0)  # geometric mean
