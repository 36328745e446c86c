"""Generators: chat messages in, text out. One required method, `generate`; `stream` and
`complete` are built on it.

- `TransformersGenerator`: a local chat model (default: the embedded SmolLM2-135M-Instruct GGUF,
  dequantised once into the cache like the reranker's; or any hub id / directory).
- `OpenAIGenerator`: any OpenAI-compatible `/chat/completions` server (vLLM, Ollama, llama.cpp
  server, OpenAI) over httpx, with timeouts and retries with exponential backoff.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from store.errors import InputError
from store.redact import get_logger, redact, remember
from store.registry import Registry

from .errors import GenerationError, MissingDependencyError, ModelLoadError
from .models import SMOLLM2_LABEL

log = get_logger(__name__)

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
ROLES = ("system", "user", "assistant")


class GenerationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    repetition_penalty: float = 1.1  # local models only; small models loop without it

    @field_validator("max_new_tokens")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("max_new_tokens must be >= 1")
        return v


def check_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    if isinstance(messages, (str, bytes)) or not messages:
        raise InputError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"message {i} must be {{'role': one of {list(ROLES)}, 'content': str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class Generator(ABC):
    """Chat messages -> reply text. `name` identifies the model (recorded with summaries and answers)."""

    name: str

    @abstractmethod
    def generate(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        """The reply to `messages` (already validated by `complete`)."""

    def stream(self, messages: Sequence[Message], options: GenerationOptions) -> Iterator[str]:
        """Reply pieces as they come; by default the whole reply at once."""
        yield self.generate(messages, options)

    def complete(self, messages: Sequence[Message], **options: Any) -> str:
        """Validate, generate, strip: the convenience every caller uses."""
        return self.generate(check_messages(messages), GenerationOptions(**options)).strip()


class TransformersGenerator(Generator):
    """A local chat model through transformers; loads on first use."""

    def __init__(self, model: str | None = None, *, device: str | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False) -> None:
        self.model_name_or_path = model
        self.name = model or SMOLLM2_LABEL
        self.device, self.dtype, self.trust_remote_code = device, dtype, trust_remote_code
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ModuleNotFoundError:
            raise MissingDependencyError("TransformersGenerator needs transformers: pip install 'qrmem[ml]'") from None
        from . import models

        source = models.resolve(self.model_name_or_path)
        device = models.pick_device(self.device)
        try:
            with models.quiet_loading():
                self._tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=self.trust_remote_code)
                self._model = AutoModelForCausalLM.from_pretrained(
                    source.path, dtype=models.pick_dtype(self.dtype, device),
                    trust_remote_code=self.trust_remote_code).eval().to(device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load generator {source.label}: {exc}") from None

    def generate(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        import torch

        if self._model is None:
            self._load()
        tok = self._tokenizer
        ids = tok.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        ids = {k: v.to(self._model.device) for k, v in ids.items()}
        sample = options.temperature > 0
        with torch.inference_mode():
            out = self._model.generate(**ids, max_new_tokens=options.max_new_tokens, do_sample=sample,
                                       temperature=options.temperature if sample else None, top_p=None,
                                       top_k=None, repetition_penalty=options.repetition_penalty,
                                       pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


class OpenAIGenerator(Generator):
    """An OpenAI-compatible chat-completions server. The key comes from an environment variable."""

    def __init__(self, model: str | None, *, base_url: str = "http://127.0.0.1:8000/v1",
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0) -> None:
        if not model:
            raise InputError("OpenAIGenerator needs a model name")
        self.name = model
        self.base_url = _check_base_url(base_url)
        self.api_key_env = api_key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._api_key()  # a malformed key is an error now, not after the first retries

    def _api_key(self) -> str | None:
        """The key from `$api_key_env` (None when unset or empty), remembered for redaction. A key
        that no HTTP header can carry is an error that names the variable, never the key."""
        key = os.environ.get(self.api_key_env) or None
        if key is None:
            return None
        remember(key)
        if any(ch.isspace() for ch in key):
            problem = "a newline, space or tab"
        elif not key.isascii() or not key.isprintable():
            problem = "a non-ASCII or control character"
        else:
            return key
        raise InputError(f"${self.api_key_env} holds {problem}; an API key is printable ASCII with no "
                         "whitespace: fix the variable (the key itself is not shown)")

    def generate(self, messages: Sequence[Message], options: GenerationOptions) -> str:
        try:
            import httpx
        except ModuleNotFoundError:
            raise MissingDependencyError("OpenAIGenerator needs httpx: pip install httpx") from None
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.name, "messages": list(messages), "max_tokens": options.max_new_tokens,
                "temperature": options.temperature}
        url = f"{self.base_url}/chat/completions"
        shown = redact(url)  # what messages call it: no credentials from --base-url
        last = ""
        for attempt in range(self.retries + 1):
            try:
                resp = httpx.post(url, json=body, headers=headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                last = redact(f"{type(exc).__name__}: {exc}")
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise GenerationError(f"{shown} answered 200 without choices[0].message.content") from None
                last = redact(f"HTTP {resp.status_code}: {resp.text[:200]}")
                if resp.status_code < 500 and resp.status_code != 429:
                    raise GenerationError(f"{shown} refused the request ({last}); check the model name "
                                          f"and ${self.api_key_env}")
            if attempt < self.retries:
                delay = self.backoff * 2**attempt
                log.warning("generator request failed (%s); retrying in %.1fs", last, delay)
                time.sleep(delay)
        raise GenerationError(f"{shown} failed after {self.retries + 1} tries ({last}); is the server "
                              "running and --base-url right?")


def _check_base_url(base_url: str) -> str:
    """An http(s) URL with a host; its password (if any) is remembered for redaction."""
    from urllib.parse import urlsplit

    if not isinstance(base_url, str) or not base_url.strip():
        raise InputError("the generator's base URL is empty; give one such as http://127.0.0.1:8000/v1")
    try:
        parts = urlsplit(base_url.strip())
        remember(parts.password)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # e.g. a port that is not a number
        ok = False
    if not ok:
        raise InputError(f"bad base URL {base_url!r}: write it as http(s)://host[:port]/path, "
                         "e.g. http://127.0.0.1:8000/v1")
    return base_url.strip().rstrip("/")


def _openai(arg: str | None, *, base_url: str | None = None, api_key_env: str | None = None,
            **kwargs: Any) -> Generator:
    kwargs.update({k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v is not None})
    return OpenAIGenerator(arg, **kwargs)


def _transformers(arg: str | None, *, base_url: str | None = None, api_key_env: str | None = None,
                  **kwargs: Any) -> Generator:
    if base_url is not None:
        raise InputError("--base-url is for openai:MODEL generators")
    return TransformersGenerator(arg, **kwargs)


GENERATORS: Registry[Generator] = Registry("generator", "qrmem.generators")
GENERATORS.register("transformers", _transformers)
GENERATORS.register("openai", _openai)


def load_generator(spec: str = "transformers", *, base_url: str | None = None,
                   api_key_env: str | None = None, **kwargs: Any) -> Generator:
    """`transformers` (the embedded SmolLM2), `transformers:MODEL`, `openai:MODEL` (with `base_url`
    and `api_key_env`; None keeps the defaults), or a plug-in's `NAME[:ARG]`."""
    return GENERATORS.create(spec, base_url=base_url, api_key_env=api_key_env, **kwargs)
