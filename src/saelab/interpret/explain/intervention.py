"""Intervention scoring (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
Large Language Models", section on intervention scoring; delphi has no scorer file for it): the
feature is switched on by adding its decoder direction, at `strength` times its largest
activation, to the hookpoint's activation at every position while the model continues a few
neutral prompts, and a causal LM judges whether the explanation predicts the change: the score is
the mean rise in the log-probability per token of the explanation after the steered continuation
over after the clean one (nats; 0 means the explanation says nothing about the effect, higher is
better). This scores what a feature does to the output, which the other scorers, reading only
where it fires, cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saelab.capture.patch import patch
from saelab.interpret.explain.examples import FeatureExamples, decoder_directions
from saelab.interpret.explain.scoring_lm import continuation_logprobs

PROMPTS = ("I think that", "The next thing I saw was", "Here is a short story:",
           "My favourite topic is", "In the news today,")
"""Neutral prompts the model continues, steered and clean."""
JUDGE = "Text: {}\nWhat the text above is about, in one sentence:"


class Intervention:
    """Whether steering with the feature moves the output towards what the explanation says."""

    name = "intervention"

    def __init__(self, model, tokenizer, hookpoint: str, dictionary, judge_model=None,
                 judge_tokenizer=None, prompts: Sequence[str] = PROMPTS, n_tokens: int = 16,
                 strength: float = 2.0):
        self.model, self.tokenizer, self.hookpoint = model, tokenizer, hookpoint
        self.dictionary, self.prompts = dictionary, list(prompts)
        self.judge = judge_model if judge_model is not None else model
        self.judge_tokenizer = judge_tokenizer if judge_tokenizer is not None else tokenizer
        self.n_tokens, self.strength = n_tokens, strength
        self.clean: list[str] | None = None

    @torch.no_grad()
    def continue_(self, prompt: str) -> str:
        """Greedy continuation of `prompt` by the (possibly steered) model."""
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids.to(self.model.device)
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=self.n_tokens, pad_token_id=pad,
                                  temperature=None, top_p=None, top_k=None)
        return prompt + self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def steered(self, feature: int, scale: float) -> list[str]:
        """The prompts' continuations with the feature added at `scale` times its direction."""
        direction = decoder_directions(self.dictionary, [feature])[0] * scale
        param = next(self.model.parameters())
        direction = direction.to(device=param.device, dtype=param.dtype)
        with patch(self.model, self.hookpoint, lambda a: a + direction):
            return [self.continue_(p) for p in self.prompts]

    def score(self, explanation: str, examples: FeatureExamples) -> float:
        if self.clean is None:
            self.clean = [self.continue_(p) for p in self.prompts]
        steered = self.steered(examples.feature, self.strength * max(examples.max_activation,
                                                                     1e-6))
        target = [" " + explanation] * len(self.prompts)
        after_steered = continuation_logprobs(self.judge, self.judge_tokenizer,
                                              [JUDGE.format(t) for t in steered], target)
        after_clean = continuation_logprobs(self.judge, self.judge_tokenizer,
                                            [JUDGE.format(t) for t in self.clean], target)
        return float(sum(a - b for a, b in zip(after_steered, after_clean)) / len(self.prompts))
