"""What vLLM's OpenAI server takes and returns, as far as the remote engine needs it.

The shapes checked against vLLM 0.33.0: `documents` is `list[dict[str, str]]`; the certainty call
asks for the ten digit ids with `logprob_token_ids` (vLLM wants `logprobs` set with it, at most
128 ids) and reads the one position's `top_logprobs` (`{token: logprob}`, tokens spelled
`token_id:N` under `--return-tokens-as-token-ids`); errors are `{"error": {"message", "type",
"param", "code"}}` (the 401 of `--api-key` is `{"error": "Unauthorized"}`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.certainty import (
    Certainty,
    ScoreResult,
    Unscored,
    certainty_from_top_logprobs,
    digit_confidence,
)
from gateway.errors import ServiceError
from gateway.types import Document

TOP_LOGPROBS = 10
"""`logprobs` of the certainty call. vLLM wants it set whenever `logprob_token_ids` is, and it
equals the ten digit ids' count; a server without that field returns this many most likely
tokens (IBM's runtime asks for the same number)."""

DIGIT_IDS_FIELD = "logprob_token_ids"
TOKEN_ID_KEY = "token_id:"
"""How vLLM spells a token in `top_logprobs` under `--return-tokens-as-token-ids`."""


class RemoteEngineFailed(ServiceError):
    """The model server could not answer: unreachable, too slow, or an error of its own."""

    status_code = 502
    error_type = "upstream_error"
    code = "engine_unavailable"


class FieldRefused(RemoteEngineFailed):
    """The model server answered 400 to a request field the gateway sent (not the client's)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def document_strings(document: Document) -> dict[str, str]:
    """A document in the shape vLLM's chat request declares (`dict[str, str]`, else a 400):
    strings stay as they are, any other JSON value becomes its JSON text (`1` -> `"1"`)."""
    return {
        str(key): value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in document.items()
    }


def completion_top_logprobs(
    choice: dict[str, Any], token_text: Callable[[int], str] | None = None
) -> dict[str, float]:
    """The `top_logprobs` of the one generated position, keyed by token text.

    A key `token_id:N` (vLLM under `--return-tokens-as-token-ids`, when the request's
    `return_tokens_as_token_ids: false` is not honoured) is turned into the text of token N.
    """
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs") or []
    if not tops or not isinstance(tops[0], dict):
        raise RemoteEngineFailed(
            "the model server returned no top_logprobs for the certainty digit; it must "
            "support `logprobs` on /v1/completions (vLLM does, up to --max-logprobs, default 20)"
        )
    top: dict[str, float] = {}
    for key, value in tops[0].items():
        text = str(key)
        if token_text is not None and text.startswith(TOKEN_ID_KEY):
            number = text[len(TOKEN_ID_KEY) :]
            if number.isdigit():
                text = token_text(int(number))
        top[text] = float(value)
    return top


def certainty_from_completion(
    choice: dict[str, Any], token_text: Callable[[int], str] | None = None
) -> ScoreResult:
    """IBM's rule on one `/v1/completions` choice whose one token is the digit: the digits
    among its `top_logprobs`, renormalised."""
    return top_digits_certainty(completion_top_logprobs(choice, token_text), choice)


def top_digits_certainty(top: dict[str, float], choice: dict[str, Any]) -> ScoreResult:
    found = certainty_from_top_logprobs(top)
    if found.score is None or found.distribution is None:
        return Unscored(reply=str(choice.get("text") or ""), mode="logits")
    return Certainty(
        score=found.score,
        confidence=digit_confidence(found.score),
        expected_confidence=found.expected_confidence,
        distribution=found.distribution,
        mode="logits",
    )


def first_choice(reply: dict[str, Any]) -> dict[str, Any]:
    choices = reply.get("choices")
    if not choices or not isinstance(choices[0], dict):
        raise RemoteEngineFailed("the model server's reply has no choices")
    choice: dict[str, Any] = choices[0]
    return choice


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise RemoteEngineFailed("the model server's reply is not JSON") from exc
    if not isinstance(value, dict):
        raise RemoteEngineFailed("the model server's reply is not a JSON object")
    return value


def error_message(payload: Any) -> str:
    """vLLM's error, `{"error": {"message"}}` (or the older flat `{"message"}`)."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(payload)


def error_param(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else ""
