"""The remote engine: the model served by vLLM, the base model and the uncertainty LoRA by name.

vLLM runs `granite-4.0-micro` with `--enable-lora --lora-modules uncertainty=PATH
--max-lora-rank 32`; a request selects the adapter by sending its name as `model`. The gateway
keeps only the tokenizer (to render the adapter's prompt exactly as the local engine does):

* the answer: `POST /v1/chat/completions` with the base model's name (streamed when the caller
  streams; vLLM applies the model's own chat template, documents included). vLLM accepts only
  string values in `documents`, so every document goes out as `document_strings` makes it;
* the certainty, `logits` mode: one `POST /v1/completions` with the adapter's name, the rendered
  certainty prompt plus the forced prefix `{"score": "` as token ids, `max_tokens: 1`,
  `temperature: 0`, `logprobs: 10` and `logprob_token_ids` = the ten digit ids, so the one
  position's `top_logprobs` holds exactly the ten digits and the distribution is the softmax over
  them, as the local engine computes it. A server that refuses the field (a 400 naming it) is
  asked again without it, and from then on; one that ignores it (vLLM before the field existed)
  returns the ten most likely tokens: then the digits among them are read by IBM's rule
  (`certainty_from_top_logprobs`), and the log says so once. `return_tokens_as_token_ids: false`
  keeps the tokens readable whatever the server's `--return-tokens-as-token-ids`;
  `token_id:N` keys are read as well;
* `generate` mode: the same prompt without the prefix, up to 15 greedy tokens, parsed as the seed
  does.

Failures are bounded like escalations (`gateway.engine.vllm_http`): every call has a deadline
(`engine.vllm_timeout_s`), a failed connection or a 5xx is tried once more, and what still fails
raises `RemoteEngineFailed` (HTTP 502). vLLM shortens `max_tokens` to what the context leaves (the
answer then ends with `finish_reason: "length"`); a prompt that fills the whole served context is
the client's `ContextLengthExceeded` (400); vLLM's 429/503 becomes our `Overloaded` (503).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from gateway.certainty import (
    MAX_REPLY_TOKENS,
    REPLY_PREFIX,
    ScoreResult,
    ScoringMode,
    certainty_from_digit_logprobs,
    certainty_messages,
    parse_reply,
)
from gateway.config import EngineSettings, ModelSettings
from gateway.engine.prompts import ControlStrings, digit_token_ids, render_prompt
from gateway.engine.vllm_http import API_KEY_HINT, VllmTransport, openai_base_url, why
from gateway.engine.vllm_protocol import (
    DIGIT_IDS_FIELD,
    TOP_LOGPROBS,
    FieldRefused,
    RemoteEngineFailed,
    completion_top_logprobs,
    document_strings,
    first_choice,
    top_digits_certainty,
)
from gateway.errors import ConfigError, ContextLengthExceeded, ModelLoadError
from gateway.types import ChatRequest, Document, FinishReason, Generation, Message

__all__ = ["RemoteEngine", "RemoteEngineFailed", "openai_base_url"]

log = logging.getLogger(__name__)

CHECK_MAX_AGE_S = 5.0
"""How long `/health/ready` reuses the last look at the model server."""


def load_tokenizer(base: str, revision: str | None = None) -> Any:
    """Only the base model's tokenizer (and chat template): no weights are loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base, revision=revision)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load the tokenizer of {base!r} (the remote engine renders the "
            f"adapter's prompt with it): {first}; point model.base (GATEWAY_MODEL__BASE) at "
            "the model's folder or hub id"
        ) from exc


class RemoteEngine:
    """`AsyncEngine` over a vLLM (or any OpenAI-compatible, logprobs-capable) server."""

    def __init__(
        self,
        *,
        base_url: str,
        base_model: str,
        adapter_model: str,
        tokenizer: Any,
        model_id: str | None = None,
        timeout_s: float = 60.0,
        scoring_mode: ScoringMode = "logits",
        max_context: int | None = None,
        retries: int = 1,
        max_connections: int = 256,
        api_key: str | None = None,
    ) -> None:
        self._http = VllmTransport(
            base_url=base_url,
            timeout_s=timeout_s,
            retries=retries,
            max_connections=max_connections,
            api_key=api_key,
        )
        self.base_url = self._http.base_url
        self.base_model = base_model
        self.adapter_model = adapter_model
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s
        self.max_context = max_context
        self._scoring_mode: ScoringMode = scoring_mode
        self._model_id = model_id or f"vllm:{base_model}+{adapter_model}"
        self.prefix_ids: list[int] = tokenizer.encode(REPLY_PREFIX, add_special_tokens=False)
        self.digit_ids = digit_token_ids(tokenizer)
        self.digit_texts = tuple(self._token_text(i) for i in self.digit_ids)
        self._ask_digit_ids = True  # until the server refuses `logprob_token_ids`
        self._fell_back = False  # whether the log has said that scoring fell back
        self._checked: tuple[float, list[str]] | None = None  # (when, problems) of `check`
        self._checking = asyncio.Lock()

    @classmethod
    def from_settings(cls, engine: EngineSettings, model: ModelSettings) -> RemoteEngine:
        """Build from `engine.vllm_*`; the tokenizer comes from `model.base` (local or hub)."""
        if not engine.vllm_base_url:
            raise ConfigError(
                "engine.vllm_base_url (or GATEWAY_ENGINE__VLLM_BASE_URL) is required when "
                "engine.kind is vllm, e.g. http://vllm:8000/v1"
            )
        base_model = engine.vllm_base_model or model.base
        sub = f"/{model.adapter_subfolder}" if model.adapter_subfolder else ""
        identity = (
            f"vllm:{base_model}+{engine.vllm_adapter_model}"
            f"|{model.base}@{model.base_revision or 'default'}"
            f"+{model.adapter}{sub}@{model.adapter_revision or 'default'}"
        )
        return cls(
            base_url=engine.vllm_base_url,
            base_model=base_model,
            adapter_model=engine.vllm_adapter_model,
            tokenizer=load_tokenizer(model.base, model.base_revision),
            model_id=identity,
            timeout_s=engine.vllm_timeout_s,
            scoring_mode=model.scoring_mode,
            max_context=model.max_context,
            api_key=engine.vllm_api_key,
        )

    @classmethod
    async def open(cls, engine: EngineSettings, model: ModelSettings) -> RemoteEngine:
        """`from_settings` off the event loop, then a look at what the server serves.

        A server that is not up yet is only logged: the gateway starts, and requests fail
        with a 502 until the server answers (vLLM takes minutes to load).
        """
        remote = await asyncio.to_thread(cls.from_settings, engine, model)
        for problem in await remote.check():  # readiness reuses this first look
            log.warning("remote engine: %s", problem, extra={"engine_url": remote.base_url})
        return remote

    # --------------------------------------------------------------- interface

    @property
    def model_id(self) -> str:
        return self._model_id

    display_name: str | None = None  # `model.name`: what `served_by` reports, if set

    @property
    def served_name(self) -> str:
        return self.display_name or self.base_model

    @property
    def scoring_mode(self) -> ScoringMode:
        return self._scoring_mode

    @property
    def queue_depth(self) -> int:
        """Requests waiting on the model server now (the server queues them itself)."""
        return self._http.in_flight

    async def close(self) -> None:
        await self._http.aclose()

    async def check(self, max_age_s: float = CHECK_MAX_AGE_S) -> list[str]:
        """`probe`, at most once per `max_age_s` (readiness probes may come often, and from
        every replica); callers meanwhile get the last answer."""
        loop = asyncio.get_running_loop()
        async with self._checking:
            if self._checked is None or loop.time() - self._checked[0] >= max_age_s:
                self._checked = (loop.time(), await self.probe())
            return self._checked[1]

    async def probe(self) -> list[str]:
        """What is wrong with the server, as sentences; empty when both models are served."""
        try:
            async with asyncio.timeout(min(self.timeout_s, 5.0)):
                response = await self._http.client.get("/models")
            response.raise_for_status()
            served = {str(m.get("id")) for m in response.json().get("data", [])}
        except (TimeoutError, httpx.HTTPError, ValueError, AttributeError) as exc:
            hint = ""
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
                hint = f"; {API_KEY_HINT}"
            return [
                f"the model server at {self.base_url} did not list its models ({why(exc)}){hint}"
            ]
        problems = []
        if self.base_model not in served:
            problems.append(
                f"the model server does not serve {self.base_model!r} (engine.vllm_base_model); "
                f"it serves {sorted(served)}"
            )
        if self.adapter_model not in served:
            problems.append(
                f"the model server does not serve the adapter {self.adapter_model!r} "
                f"(engine.vllm_adapter_model); start vLLM with --enable-lora --lora-modules "
                f"{self.adapter_model}=PATH --max-lora-rank 32"
            )
        return problems

    # --------------------------------------------------------------- prompts

    def render(
        self, messages: Sequence[dict[str, str]], documents: Sequence[Document] = ()
    ) -> list[int]:
        """Token ids of a conversation rendered by the model's own chat template; client text
        never becomes a control token (`gateway.engine.prompts`)."""
        return render_prompt(self.tokenizer, messages, documents)

    def certainty_prompt(
        self, messages: Sequence[Message], answer: str, documents: Sequence[Document] = ()
    ) -> list[int]:
        """The adapter's prompt: request + answer + `<certainty>` turn, the same documents."""
        conversation = certainty_messages([m.as_dict() for m in messages], answer)
        ids = self.render(conversation, documents)
        budget = len(ids) + len(self.prefix_ids) + MAX_REPLY_TOKENS
        if self.max_context is not None and budget > self.max_context:
            raise ContextLengthExceeded(
                "the conversation and its answer do not fit the model's context for scoring",
                param="messages",
            )
        return ids

    # ---------------------------------------------------------------- answers

    async def generate(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> Generation:
        """The base model's answer; `on_text` gets each piece as vLLM streams it."""
        # vLLM tokenizes chat messages with control tokens live: it gets them without any
        # control-token string, as `render` would render them (`gateway.engine.prompts`).
        plain = ControlStrings.of(self.tokenizer)
        messages, documents = await asyncio.to_thread(
            plain.conversation, request.message_dicts(), request.documents
        )
        body: dict[str, Any] = {
            "model": self.base_model,
            "messages": messages,
            **request.sampling.openai_kwargs(),
        }
        if documents:
            body["documents"] = [document_strings(d) for d in documents]
        if on_text is None:
            reply = await self._http.post("/chat/completions", body)
            choice = first_choice(reply)
            message = choice.get("message") or {}
            return self._generation(
                request,
                str(message.get("content") or ""),
                choice.get("finish_reason"),
                reply.get("usage"),
            )
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        parts: list[str] = []
        finish: Any = None
        usage: Any = None
        # Closed here, whatever happens: the stream's deadline must not outlive the loop.
        async with aclosing(self._http.stream("/chat/completions", body)) as chunks:
            async for chunk in chunks:
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        parts.append(piece)
                        on_text(piece)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        return self._generation(request, "".join(parts), finish, usage)

    def _generation(self, request: ChatRequest, text: str, finish: Any, usage: Any) -> Generation:
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            documents = [document_strings(d) for d in request.documents]
            prompt_tokens = len(self.render(request.message_dicts(), documents))
        completion_tokens = usage.get("completion_tokens")
        if completion_tokens is None:
            completion_tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
        reason: FinishReason = "length" if finish == "length" else "stop"
        return Generation(
            text=text,
            finish_reason=reason,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
        )

    # ---------------------------------------------------------------- scoring

    async def score(
        self,
        messages: Sequence[Message],
        answer: str,
        documents: Sequence[Document] = (),
        mode: ScoringMode | None = None,
    ) -> ScoreResult:
        """The adapter's rating of `answer`: one completion step with its name as `model`."""
        # The documents as vLLM rendered them for the answer.
        same = [document_strings(d) for d in documents]
        prompt = await asyncio.to_thread(self.certainty_prompt, messages, answer, same)
        if (mode or self._scoring_mode) == "generate":
            reply = await self._http.post(
                "/completions",
                {
                    "model": self.adapter_model,
                    "prompt": prompt,
                    "max_tokens": MAX_REPLY_TOKENS,
                    "temperature": 0.0,
                },
            )
            return parse_reply(str(first_choice(reply).get("text") or ""))
        body: dict[str, Any] = {
            "model": self.adapter_model,
            "prompt": prompt + self.prefix_ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": TOP_LOGPROBS,
            "return_tokens_as_token_ids": False,
        }
        if self._ask_digit_ids:
            body[DIGIT_IDS_FIELD] = list(self.digit_ids)
        try:
            reply = await self._http.post("/completions", body)
        except FieldRefused as refused:
            if refused.field != DIGIT_IDS_FIELD or DIGIT_IDS_FIELD not in body:
                raise
            self._ask_digit_ids = False
            self._fall_back(f"the model server refuses {DIGIT_IDS_FIELD} ({refused.message})")
            del body[DIGIT_IDS_FIELD]
            reply = await self._http.post("/completions", body)
        choice = first_choice(reply)
        top = completion_top_logprobs(choice, self._token_text)
        exact = [top[text] for text in self.digit_texts if text in top]
        if len(exact) == len(self.digit_texts):
            return certainty_from_digit_logprobs(exact)
        if DIGIT_IDS_FIELD in body:
            self._fall_back(
                f"the model server ignores {DIGIT_IDS_FIELD} (it returned "
                f"{len(exact)} of the ten digits; vLLM's OpenAI server has it since July 2026)"
            )
        return top_digits_certainty(top, choice)

    def _token_text(self, token_id: int) -> str:
        text: str = self.tokenizer.decode([token_id])
        return text

    def _fall_back(self, why: str) -> None:
        """Say once that scoring reads only the digits among the most likely tokens."""
        if not self._fell_back:
            self._fell_back = True
            log.warning(
                "remote engine: %s; certainties come from the digits among the top %d tokens "
                "(IBM's rule), which can differ from the local engine's",
                why,
                TOP_LOGPROBS,
                extra={"engine_url": self.base_url},
            )
