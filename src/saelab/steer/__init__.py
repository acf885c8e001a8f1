"""Steering a model with a dictionary's features.

    >>> from saelab.steer import steer, add, ablate, compare
    >>> with steer(lm, sae, add(123, 4.0), ablate([7])):   # every forward inside is steered
    ...     lm.model.generate(...)
    >>> compare(lm, sae, "The weather today", [add(123, 4.0)])   # clean vs steered, read back

- edits (`add`, `clamp`, `scale`, `ablate`) change codes; `Steering` applies them at the
  dictionary's hookpoint with the error term kept (`saelab.steer.intervene`);
- `generate` / `compare`: greedy continuations with the feature's activation on every generated
  token and the perplexity under the clean model (`saelab.steer.generate`);
- `compare_tiers`: the tiers of "Breaking Bad Tokens" (`saelab.steer.tiers`), with a concept
  probe (`EmbeddingProbe`);
- `Attenuation` (APP) and `masking_edit`: removing a concept judged on labelled rows, partially
  or fully (`saelab.steer.app`);
- `saelab steer` on the command line (`saelab.steer.run`).
"""

from saelab.steer.app import Attenuation, masking_edit
from saelab.steer.edits import CodeEdit, Edit, ablate, add, clamp, scale
from saelab.steer.generate import Comparison, Generation, compare, generate, read
from saelab.steer.intervene import Steering, steer
from saelab.steer.probe import EmbeddingProbe
from saelab.steer.run import SteerConfig, format_comparison, run_steer
from saelab.steer.tiers import TIERS, TierResult, compare_tiers

__all__ = ["Attenuation", "CodeEdit", "Comparison", "Edit", "EmbeddingProbe", "Generation",
           "SteerConfig", "Steering", "TIERS", "TierResult", "ablate", "add", "clamp", "compare",
           "compare_tiers", "format_comparison", "generate", "masking_edit", "read", "run_steer",
           "scale", "steer"]
