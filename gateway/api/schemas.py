"""Wire models of the OpenAI Chat Completions request, and what we refuse in it.

Unknown fields are ignored, as OpenAI-compatible servers do. Fields we cannot honour get a 400
that names the parameter; fields that would choose where the gateway sends traffic (`api_base`,
`api_key`, ...) are refused outright.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator

from gateway.config import LimitSettings
from gateway.engine.vllm_protocol import document_strings
from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.types import ChatRequest, Message, SamplingParams

REDIRECTING_FIELDS = (
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "custom_llm_provider",
    "azure_endpoint",
    "organization",
    "extra_headers",
    "litellm_params",
    "mock_response",
)
"""Request fields that would let a client redirect traffic or swap credentials: always 400."""

UNSUPPORTED_FIELDS = {
    "tools": "tool calling is not supported by this gateway",
    "tool_choice": "tool calling is not supported by this gateway",
    "functions": "function calling is not supported by this gateway",
    "function_call": "function calling is not supported by this gateway",
    "parallel_tool_calls": "tool calling is not supported by this gateway",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
"""Fields we cannot honour: a 400 when they are present and not null."""

StrictInt = Annotated[int, Field(strict=True)]
"""Booleans, numbers: strict, as OpenAI's API is (`"stream": "yes"`, `"max_tokens": "5"`, `true`
as a number, `5.5` as an integer are each a 400). A float field takes an integer (`0` is 0.0)."""
StrictFloat = Annotated[float, Field(strict=True)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # Documented as the roles served; any other is refused by `to_request` with a 400 that
    # names the parameter (a plain `Literal` would give a generic validation message).
    role: Annotated[str, Field(json_schema_extra={"enum": ["system", "user", "assistant"]})]
    content: str | list[dict[str, Any]] | None = None

    def text(self, index: int) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            raise InvalidRequest(
                f"messages[{index}].content is required",
                param=f"messages[{index}].content",
                code="missing_required_parameter",
            )
        pieces = []
        for k, part in enumerate(self.content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise UnsupportedParameter(
                    f"messages[{index}].content[{k}] is of type {kind!r}; only text parts "
                    "are supported",
                    param=f"messages[{index}].content[{k}].type",
                )
            pieces.append(part["text"])
        return "".join(pieces)


DocumentBody = Annotated[
    dict[str, str],
    BeforeValidator(
        lambda d: document_strings(d) if isinstance(d, dict) else d,
        json_schema_input_type=dict[str, Any],
    ),
]
"""A RAG document: an object whose values reach the model as strings (any other JSON value as
its JSON text), the shape vLLM's chat request takes, whichever engine answers."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class ChatCompletionBody(BaseModel):
    """`POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: Annotated[list[WireMessage], Field(min_length=1)]
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI's
    n: StrictInt | None = Field(default=None, ge=1)
    user: str | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    documents: list[DocumentBody] | None = None
    logprobs: StrictBool | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > 4:
                raise ValueError("at most 4 stop sequences")
            if any(not s for s in value):
                raise ValueError("stop sequences must not be empty")
        if value == "":
            raise ValueError("stop sequences must not be empty")
        return value

    def refuse_unsupported(self) -> None:
        """400 for fields that redirect traffic or that we cannot honour."""
        extra = self.model_extra or {}
        for name in REDIRECTING_FIELDS:
            if name in extra:
                raise InvalidRequest(
                    f"{name!r} is not accepted: clients cannot choose where the gateway sends "
                    "traffic",
                    param=name,
                    code="parameter_not_allowed",
                )
        for name, why in UNSUPPORTED_FIELDS.items():
            if extra.get(name) not in (None, [], False):
                raise UnsupportedParameter(f"{name}: {why}", param=name)
        if self.n is not None and self.n != 1:
            raise UnsupportedParameter("n: only n=1 is supported", param="n")
        if self.logprobs:
            raise UnsupportedParameter("logprobs are not supported", param="logprobs")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise UnsupportedParameter(
                "response_format: only the text format is supported", param="response_format"
            )

    def to_request(
        self, *, default_max_tokens: int, max_tokens_cap: int, limits: LimitSettings | None = None
    ) -> ChatRequest:
        self.refuse_unsupported()
        _within_limits(self, limits or LimitSettings())
        messages = []
        for index, message in enumerate(self.messages):
            if message.role not in ("system", "user", "assistant"):
                raise UnsupportedParameter(
                    f"messages[{index}].role {message.role!r} is not supported; use system, "
                    "user or assistant",
                    param=f"messages[{index}].role",
                )
            role: Literal["system", "user", "assistant"] = message.role  # type: ignore[assignment]
            content = _unicode(message.text(index), f"messages[{index}].content")
            messages.append(Message(role=role, content=content))
        if messages[-1].role == "assistant":
            raise InvalidRequest(
                "the last message must be from the user or the system",
                param="messages",
                code="invalid_value",
            )
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens
        if max_tokens > max_tokens_cap:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}; this gateway allows at most {max_tokens_cap}",
                param="max_completion_tokens" if self.max_completion_tokens else "max_tokens",
                code="max_tokens_exceeded",
            )
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stops,
            seed=self.seed,
        )
        return ChatRequest(
            messages=tuple(messages),
            documents=tuple(
                _unicode_document(document, index)
                for index, document in enumerate(self.documents or ())
            ),
            sampling=sampling,
        )


def _within_limits(body: ChatCompletionBody, limits: LimitSettings) -> None:
    """400 for more or larger documents, or longer stop sequences, than `limits` allow."""
    documents = body.documents or []
    if len(documents) > limits.max_documents:
        raise InvalidRequest(
            f"{len(documents)} documents; this gateway accepts at most {limits.max_documents}",
            param="documents",
        )
    for index, document in enumerate(documents):
        size = len(json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > limits.max_document_bytes:
            raise InvalidRequest(
                f"documents[{index}] is {size} bytes; this gateway accepts at most "
                f"{limits.max_document_bytes} bytes per document",
                param="documents",
            )
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if any(len(stop) > limits.max_stop_chars for stop in stops):
        raise InvalidRequest(
            f"a stop sequence may be at most {limits.max_stop_chars} characters long",
            param="stop",
        )


def _unicode(text: str, param: str) -> str:
    """`text`, unless it holds a lone surrogate (JSON's `\\ud800` escapes allow one): such text
    cannot be encoded, so no model could read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{param} is not valid Unicode text (it holds a lone surrogate)", param=param
        ) from None
    return text


def _unicode_document(document: dict[str, Any], index: int) -> dict[str, Any]:
    _unicode(json.dumps(document, ensure_ascii=False), f"documents[{index}]")
    return document
