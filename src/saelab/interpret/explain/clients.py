"""Language models that write and judge explanations: any OpenAI-compatible HTTP server, or a
transformers causal LM in this process.

A client turns chat messages into the model's reply text (`generate`). The HTTP client goes
through the `openai` Python package (vLLM, llama.cpp's server, ollama, `transformers serve`, a
hosted API): its base URL and key come from the arguments or from the environment
(SAELAB_EXPLAINER_URL / OPENAI_BASE_URL, SAELAB_EXPLAINER_KEY / OPENAI_API_KEY). What can pass
(a rate limit, a timeout, a refused connection, a server error, a reply without text) is retried
with exponential backoff, honouring a Retry-After header; what still fails, or cannot pass (a
wrong key, an unknown model), is an ExplainerError naming the server and what to do, so that the
run stops with what it wrote kept (delphi's clients, `delphi/clients/`, are the reference for
the OpenAI-compatible path; the retry policy is saelab's own).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol

import torch

from saelab.errors import MissingDependencyError, SaelabError

log = logging.getLogger(__name__)

URL_ENV = ("SAELAB_EXPLAINER_URL", "OPENAI_BASE_URL")
"""Environment variables read, in order, for the server's base URL."""
KEY_ENV = ("SAELAB_EXPLAINER_KEY", "OPENAI_API_KEY")
"""Environment variables read, in order, for the API key (local servers need none)."""
Messages = list[dict[str, str]]
"""Chat messages: [{"role": "system" | "user" | "assistant", "content": ...}, ...]."""


class ExplainerError(SaelabError):
    """A language model could not be reached or gave no usable answer."""


class Client(Protocol):
    """What the explainer and the scorers call."""

    name: str
    """What the explanations record as their `explainer`."""

    def generate(self, messages: Messages, max_tokens: int = 128,
                 temperature: float = 0.0) -> str:
        """The model's reply to `messages`."""
        ...


def _env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class OpenAIClient:
    """A chat model behind an OpenAI-compatible HTTP endpoint (`/v1/chat/completions`)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0):
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("the HTTP explainer needs the openai client: "
                                         "pip install openai") from None
        self.base_url = base_url or _env(URL_ENV)
        if not self.base_url:
            raise ExplainerError("no explainer URL: pass --explainer-url (e.g. "
                                 "http://127.0.0.1:8000/v1) or set SAELAB_EXPLAINER_URL")
        self.model, self.max_retries, self.backoff = model, max_retries, backoff
        self._wait = 0.0
        self.name = f"{model} @ {self.base_url}"
        self.openai = openai
        # The openai client's own retries are off: the loop below retries, and says so.
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or _env(KEY_ENV)
                                    or "not-needed", timeout=timeout, max_retries=0)

    def generate(self, messages: Messages, max_tokens: int = 128,
                 temperature: float = 0.0) -> str:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._wait)
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens,
                    temperature=temperature)
                text = reply.choices[0].message.content
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("the reply holds no text")
                return text
            except Exception as e:  # noqa: BLE001  (sorted into retry / stop below)
                last = self._sort(e, attempt)
        raise ExplainerError(f"{self.name}: {last} (gave up after {self.max_retries + 1} "
                             f"attempts); rerun the same command to resume where it stopped")

    def _sort(self, e: Exception, attempt: int) -> str:
        """What went wrong, retried (sets the wait) or raised at once when retrying is futile."""
        oa = self.openai
        self._wait = self.backoff * 2 ** attempt
        if isinstance(e, oa.RateLimitError):
            after = e.response.headers.get("retry-after") if e.response is not None else None
            try:
                self._wait = max(self._wait, float(after)) if after else self._wait
            except ValueError:
                pass
            what = "rate limited (429)"
        elif isinstance(e, oa.APITimeoutError):
            what = "timed out"
        elif isinstance(e, oa.APIConnectionError):
            what = f"cannot connect ({e.__cause__ or e}): is the server running at that URL?"
        elif isinstance(e, oa.APIStatusError):
            if e.status_code < 500:  # a wrong key, an unknown model: retrying cannot help
                raise ExplainerError(f"{self.name} refused the request ({e.status_code}): "
                                     f"{e.message}") from None
            what = f"server error {e.status_code}"
        elif isinstance(e, (oa.APIResponseValidationError, ValueError, AttributeError,
                            IndexError, TypeError, KeyError)):
            what = f"malformed answer ({e})"
        else:
            raise e
        log.warning("%s: %s; retrying in %.1f s", self.name, what, self._wait)
        return what


class LocalClient:
    """A transformers causal LM run in this process (greedy unless a temperature is given)."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name

    @classmethod
    def load(cls, name: str) -> "LocalClient":
        """A packaged alias, folder or Hub name, loaded through `saelab.models.load`."""
        from saelab.models import load

        lm = load(name)
        if lm.kind != "causal_lm" or lm.tokenizer is None:
            raise ExplainerError(f"{name} is not a causal LM with a tokenizer; the local "
                                 f"explainer needs one (e.g. smollm2-135m)")
        return cls(lm.model, lm.tokenizer, name)

    prefill = True
    """A last assistant message is the start of the reply, continued (as `continue_final_message`
    in transformers' chat templates); HTTP clients send messages as they are."""

    def prompt_ids(self, messages: Messages) -> torch.Tensor:
        """The chat template applied to `messages`, ready for the reply [1, T] (continuing a
        last assistant message)."""
        if getattr(self.tokenizer, "chat_template", None):
            cont = messages[-1]["role"] == "assistant"
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=not cont,
                                                     continue_final_message=cont,
                                                     return_tensors="pt", return_dict=False)
            ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
            return ids.reshape(1, -1)
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return self.tokenizer(text, return_tensors="pt").input_ids

    @torch.no_grad()
    def generate(self, messages: Messages, max_tokens: int = 128,
                 temperature: float = 0.0) -> str:
        ids = self.prompt_ids(messages).to(self.model.device)
        sample = temperature > 0
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=max_tokens, do_sample=sample,
                                  temperature=temperature if sample else None, top_p=None,
                                  top_k=None, pad_token_id=pad)
        start = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        return start + self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def make_client(url: str | None = None, model: str | None = None, local: str | None = None,
                api_key: str | None = None, timeout: float = 60.0,
                max_retries: int = 4) -> Client:
    """The client the options name: `local` (a model run here), else the HTTP `url` (or the
    environment's) serving `model`."""
    if local and (url or model):
        raise ExplainerError("name either a local explainer (--explainer-local) or an HTTP one "
                             "(--explainer-url/--explainer-model), not both")
    if local:
        return LocalClient.load(local)
    if not model:
        raise ExplainerError("name the explainer: --explainer-local MODEL (run here, e.g. "
                             "smollm2-135m) or --explainer-url URL --explainer-model NAME")
    return OpenAIClient(model, url, api_key, timeout=timeout, max_retries=max_retries)
