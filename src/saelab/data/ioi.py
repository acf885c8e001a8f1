"""Indirect object identification (IOI): a templated task with known attributes per prompt.

An IOI prompt names two people and then has one of them (the subject, S) act towards the other
(the indirect object, IO): "When Mary and John went to the store, John gave a drink to" is
completed by " Mary". The task comes from "Interpretability in the Wild: a Circuit for Indirect
Object Identification in GPT-2 small" (Wang et al. 2022); "Towards Principled Evaluations of Sparse
Autoencoders for Interpretability and Control" (Makelov, Lange and Nanda 2024) uses it as a task
whose every prompt has known attributes, the values a supervised feature dictionary is fitted to
(`saelab.dictionaries.supervised`). Their reference code (github.com/amakelov/sae, `ioi_utils.py`:
`Prompt`, `resample_pattern`; `circuit_utils.py`: `get_prompt_representation`) describes each
prompt by three attributes, kept here under the same names:

- `io`: the IO name (an index into the prompts' `names`),
- `s`: the S name (same index space),
- `io_pos`: 0 when IO is named first ("A and B ..., B gave ... to": ABB), 1 when it is named
  second (BAB), as the reference's `0 if p.io_token < p.s1_token else 1`.

`make_prompts` draws prompts balanced between ABB and BAB (exactly half each), IO and S distinct
and uniform over the names, the template uniform; `counterfactual` changes one attribute (a new IO
or S name from a given pool, or the order flipped with the names kept: the reference's
`resample_pattern` from ABB to BAB); `run` puts prompts through a causal LM and reads the logits of
every name at the final position, with the activation at a hookpoint's final position read and,
if asked, replaced there (splicing a reconstruction, an edit, or a counterfactual activation).

SmolLM2-135M-Instruct solves the task: on 512 held-out prompts IO's logit is above S's in 99.6%
and IO is the top next token in 95.9% (mean logit difference 5.03; `bench/supervised_ioi.py`,
2026-12-03). Its final position carries IO's position at blocks 20-22 and the IO name from block
23 on (the docs' benchmark page "Supervised dictionaries on IOI").

The names and templates are saelab's own (the reference's are GPT-2's), chosen so that every name
is one token with a leading space in SmolLM2's tokenizer (`single_token_names` checks any other
tokenizer) and a template's prompts all have the same length, so that the final position of a
batch is its last column.

    >>> lm = saelab.models.load("smollm2-135m")
    >>> names = single_token_names(lm.tokenizer)
    >>> prompts = make_prompts(names, 512, seed=0)
    >>> clean = run(lm, prompts)
    >>> clean.logit_diff.mean(), (clean.logit_diff > 0).float().mean()   # the task's accuracy
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor

from saelab.errors import DataError

ATTRIBUTES = ("io", "s", "io_pos")
"""The attributes of an IOI prompt, in the column order of `IOIPrompts.attributes()`."""

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Lisa", "Mark", "Emma",
    "Peter", "Kate", "Michael", "Laura", "Daniel", "Susan", "Robert", "Linda", "George", "Alice",
    "Henry", "Jane", "Jack", "Rachel", "Chris", "Amy", "Steve", "Helen", "Kevin", "Emily", "Brian",
    "Ryan", "Adam", "Grace", "Andrew", "Sam", "Lucy", "Jason", "Anne", "Eric", "Rose", "Scott",
    "Ruth", "Alex", "Kim", "Dan", "Joe", "Ben", "Mike", "Matt", "Nick", "Jim", "Bob", "Bill",
    "Max", "Leo", "Ian", "Sean", "Luke", "Tim", "Frank", "Carl", "Ted", "Fred", "Jeff", "Greg",
    "Sophie", "Claire", "Olivia", "Julia", "Maria", "Diana", "Nancy", "Karen", "Betty", "Jessica",
    "Thomas", "William", "Richard", "Charles", "Joseph", "Edward", "Victoria", "Jacob", "Ethan",
    "Oliver", "Harry", "Tony", "Martin", "Simon", "Arthur", "Louis", "Hannah", "Sally", "Molly",
    "Eva", "Ella", "Ruby", "Amanda", "Patrick", "Kelly", "Rebecca", "Samuel", "Joshua", "Carol",
)
"""Candidate first names (every one a single token with a leading space in SmolLM2's
tokenizer)."""

TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "After {A} and {B} went to the park, {S} gave a ball to",
    "Then, {A} and {B} had a long argument. Afterwards, {S} said to",
    "While {A} and {B} were working at the office, {S} gave a report to",
    "Later, {A} and {B} had lots of fun at the beach. {S} gave a towel to",
    "When {A} and {B} arrived at the party, {S} brought a gift to",
    "Then, {A} and {B} went to the restaurant. {S} handed the menu to",
    "When {A} and {B} got a snack at the cafe, {S} offered a cookie to",
)
"""Templates: {A} and {B} are the two names in order, {S} the subject's second mention; the
answer (IO) follows the last word. Every placeholder follows a space (a name that opens the text
would be another token)."""


@dataclass(frozen=True)
class IOIPrompts:
    """IOI prompts as attribute values (one row per prompt)."""

    names: tuple[str, ...]
    """The names that `io` and `s` index."""
    templates: tuple[str, ...]
    """The templates that `template` indexes."""
    template: Tensor
    """Template of each prompt [N] (long)."""
    io: Tensor
    """IO name of each prompt [N] (index into `names`)."""
    s: Tensor
    """S name of each prompt [N] (index into `names`)."""
    io_pos: Tensor
    """0 where IO is named first (ABB), 1 where it is named second (BAB) [N]."""

    def __len__(self) -> int:
        return len(self.io)

    def text(self, i: int) -> str:
        """The prompt's text (no answer)."""
        io, s = self.names[int(self.io[i])], self.names[int(self.s[i])]
        first, second = (io, s) if int(self.io_pos[i]) == 0 else (s, io)
        return self.templates[int(self.template[i])].format(A=first, B=second, S=s)

    def texts(self) -> list[str]:
        return [self.text(i) for i in range(len(self))]

    def attributes(self) -> Tensor:
        """Attribute values [N, 3] (long) in the order of `ATTRIBUTES`: io, s, io_pos; the labels
        a supervised dictionary is fitted to."""
        return torch.stack([self.io, self.s, self.io_pos], 1)

    def value_counts(self) -> tuple[int, int, int]:
        """How many values each attribute can take: (len(names), len(names), 2)."""
        return len(self.names), len(self.names), 2

    def subset(self, index: Tensor | slice) -> "IOIPrompts":
        """The prompts at `index`."""
        return dataclasses.replace(self, template=self.template[index], io=self.io[index],
                                   s=self.s[index], io_pos=self.io_pos[index])


def single_token_names(tokenizer: Any, candidates: Sequence[str] = NAMES) -> tuple[str, ...]:
    """The candidates that are one token with a leading space (" Mary"), each a distinct token."""
    out, seen = [], set()
    for name in candidates:
        ids = tokenizer.encode(" " + name, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in seen:
            out.append(name)
            seen.add(ids[0])
    return tuple(out)


def make_prompts(names: Sequence[str], n: int, seed: int = 0,
                 templates: Sequence[str] = TEMPLATES,
                 pool: Sequence[int] | None = None) -> IOIPrompts:
    """`n` prompts (even), half ABB and half BAB (shuffled), IO and S two distinct names drawn
    uniformly from `pool` (indices into `names`; default all), each prompt's template drawn
    uniformly. The prompts index `names` whatever the pool, so prompts drawn from different
    pools share one attribute space."""
    if n <= 0 or n % 2:
        raise DataError(f"IOI prompts come in ABB/BAB pairs: n must be a positive even number, "
                        f"got {n}")
    choices = torch.arange(len(names)) if pool is None else torch.as_tensor(list(pool)).long()
    if len(choices) < 2:
        raise DataError(f"IOI needs at least two names, got {len(choices)}")
    g = torch.Generator().manual_seed(seed)
    io = torch.randint(len(choices), (n,), generator=g)
    s = (io + torch.randint(1, len(choices), (n,), generator=g)) % len(choices)  # s != io
    io_pos = torch.arange(n)[torch.randperm(n, generator=g)] % 2  # exactly half each
    template = torch.randint(len(templates), (n,), generator=g)
    return IOIPrompts(tuple(names), tuple(templates), template, choices[io], choices[s], io_pos)


def counterfactual(prompts: IOIPrompts, attribute: str, pool: Sequence[int] | None = None,
                   seed: int = 0) -> IOIPrompts:
    """The prompts with one attribute changed: "io" or "s" get a new name drawn from `pool`
    (indices into `prompts.names`; default all) that is neither of the prompt's two names;
    "io_pos" flips the order of the two names (ABB <-> BAB), keeping them."""
    if attribute == "io_pos":
        return dataclasses.replace(prompts, io_pos=1 - prompts.io_pos)
    if attribute not in ("io", "s"):
        raise DataError(f"unknown IOI attribute {attribute!r}; attributes: {', '.join(ATTRIBUTES)}")
    choices = torch.as_tensor(list(range(len(prompts.names))) if pool is None else list(pool))
    g = torch.Generator().manual_seed(seed)
    new = torch.empty_like(prompts.io)
    for i in range(len(prompts)):
        allowed = choices[(choices != prompts.io[i]) & (choices != prompts.s[i])]
        if len(allowed) == 0:
            raise DataError(f"the pool of names has none besides prompt {i}'s two names")
        new[i] = allowed[torch.randint(len(allowed), (1,), generator=g)]
    return dataclasses.replace(prompts, **{attribute: new})


class IOIRun(NamedTuple):
    """What a model does on IOI prompts at the final position."""

    name_logits: Tensor
    """Logit of every name of `prompts.names` (as " Name") [N, n_names]."""
    prediction: Tensor
    """The model's top next token over the whole vocabulary [N]."""
    activation: Tensor | None
    """The activation at the hookpoint's final position as the model computed it [N, d] (before
    any replacement); None without a hookpoint."""
    io_token: Tensor
    """Token id of each prompt's IO name [N]."""
    s_token: Tensor
    """Token id of each prompt's S name [N]."""

    def logit_diff(self, prompts: IOIPrompts) -> Tensor:
        """Logit of IO minus logit of S per prompt [N] (the task's measure; > 0: correct)."""
        rows = torch.arange(len(prompts))
        return self.name_logits[rows, prompts.io] - self.name_logits[rows, prompts.s]


def name_tokens(tokenizer: Any, names: Sequence[str]) -> Tensor:
    """Token id of " Name" for each name [n_names] (a DataError if one is not a single token)."""
    ids = []
    for name in names:
        encoded = tokenizer.encode(" " + name, add_special_tokens=False)
        if len(encoded) != 1:
            raise DataError(f"name {name!r} is {len(encoded)} tokens in this tokenizer; use "
                            f"single_token_names(tokenizer)")
        ids.append(encoded[0])
    return torch.tensor(ids)


def token_batches(tokenizer: Any, prompts: IOIPrompts, batch_size: int = 64
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """(index [b], tokens [b, T]) batches of the prompts, a template's prompts together (one
    length, so the final position is the last column)."""
    texts = prompts.texts()
    for t in range(len(prompts.templates)):
        rows = (prompts.template == t).nonzero().flatten()
        for index in rows.split(batch_size):
            ids = [tokenizer.encode(texts[i], add_special_tokens=False) for i in index]
            if len({len(x) for x in ids}) != 1:
                raise DataError(f"template {t}'s prompts tokenise to different lengths: use "
                                f"single_token_names(tokenizer)")
            yield index, torch.tensor(ids)


@torch.no_grad()
def final_activations(lm: Any, prompts: IOIPrompts, hookpoints: Sequence[str],
                      batch_size: int = 64) -> dict[str, Tensor]:
    """The activation at each hookpoint's final position [N, d] by hookpoint key (the forward
    stops after the last hookpoint)."""
    from saelab.capture import capture

    out: dict[str, Tensor] = {}
    for index, tokens in token_batches(lm.tokenizer, prompts, batch_size):
        for key, act in capture(lm.model, hookpoints, tokens).items():  # act [b, T, d]
            if key not in out:
                out[key] = torch.empty(len(prompts), act.shape[-1])
            out[key][index] = act[:, -1].float()
    return out


@torch.no_grad()
def run(lm: Any, prompts: IOIPrompts, hookpoint: str | None = None,
        replace: Tensor | Callable[[Tensor, Tensor], Tensor] | None = None,
        batch_size: int = 64) -> IOIRun:
    """Run `lm` (a `saelab.models.LoadedModel`) on the prompts, a template's prompts together.

    At `hookpoint` (a hookpoint spec, e.g. "model.layers.15") the final position's activation is
    read and, when `replace` is given, replaced: by `replace[i]` ([N, d], one row per prompt), or
    by `replace(activation [b, d], index [b])` for the prompts at `index`."""
    from saelab.capture.patch import patch

    names = name_tokens(lm.tokenizer, prompts.names)
    n = len(prompts)
    name_logits = torch.empty(n, len(names))
    prediction = torch.empty(n, dtype=torch.long)
    activation: Tensor | None = None
    for index, tokens in token_batches(lm.tokenizer, prompts, batch_size):
        seen: dict[str, Tensor] = {}

        def at_final(act: Tensor, index=index, seen=seen) -> Tensor:  # act [b, T, d]
            seen["x"] = act[:, -1].detach().clone()
            if replace is None:
                return act
            new = replace(seen["x"], index) if callable(replace) else replace[index]
            act = act.clone()
            act[:, -1] = new.to(act)
            return act

        if hookpoint is None:
            logits = lm.model(tokens).logits[:, -1]
        else:
            with patch(lm.model, hookpoint, at_final):
                logits = lm.model(tokens).logits[:, -1]
            if activation is None:
                activation = torch.empty(n, seen["x"].shape[-1])
            activation[index] = seen["x"].float()
        name_logits[index] = logits[:, names].float()
        prediction[index] = logits.argmax(-1)
    return IOIRun(name_logits, prediction, activation, names[prompts.io], names[prompts.s])


def accuracy(result: IOIRun, prompts: IOIPrompts) -> float:
    """Fraction of prompts whose IO logit exceeds the S logit."""
    return float((result.logit_diff(prompts) > 0).float().mean())


def top_is_io(result: IOIRun) -> float:
    """Fraction of prompts whose top next token over the whole vocabulary is the IO name."""
    return float((result.prediction == result.io_token).float().mean())
