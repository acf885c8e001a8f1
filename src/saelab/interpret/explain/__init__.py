"""Automated interpretation: a language model explains each feature from its contexts, and
scorers measure how well the explanation predicts where the feature fires (detection, fuzzing,
embedding, surprisal) and what it does (intervention).

After Paulo et al. 2024, "Automatically Interpreting Millions of Features in Large Language
Models" (EleutherAI's delphi is the reference implementation). `saelab explain` runs it over a
store; `run_explain` is the same from Python.
"""

from saelab.interpret.explain.clients import (Client, ExplainerError, LocalClient, OpenAIClient,
                                              make_client)
from saelab.interpret.explain.examples import (Example, FeatureExamples, Sampling, Text,
                                               examples_for)
from saelab.interpret.explain.explainer import Explanation, explain
from saelab.interpret.explain.run import (ExplainConfig, format_summary, read_results,
                                          run_explain, summarise)
from saelab.interpret.explain.scorers import SCORERS, Resources, build

__all__ = ["SCORERS", "Client", "Example", "ExplainConfig", "ExplainerError", "Explanation",
           "FeatureExamples", "LocalClient", "OpenAIClient", "Resources", "Sampling", "Text",
           "build", "examples_for", "explain", "format_summary", "make_client", "read_results",
           "run_explain", "summarise"]
