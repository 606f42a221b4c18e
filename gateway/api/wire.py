"""Completions turned into OpenAI response bodies, SSE chunks and the gateway's headers.

Bodies are serialized by orjson: on a cache hit, `json.dumps` of the body was the largest single
cost after the HTTP parsing itself.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import Any

import orjson

from gateway.certainty import Certainty, ScoreResult
from gateway.completion import Completion, Decided


def completion_id() -> str:
    """A unique id (not a secret: drawn without a system call)."""
    return f"chatcmpl-{random.getrandbits(96):024x}"


def decision_headers(
    policy: str, decision: Decided | None, *, cached: bool | None = None
) -> dict[str, str]:
    """`x-gateway-*` and, when the certainty is already known, `x-certainty-*`."""
    headers = {"x-gateway-policy": policy}
    if decision is not None:
        headers["x-gateway-action"] = decision.action.value
        headers["x-gateway-cache"] = "hit" if decision.cached else "miss"
        headers.update(certainty_headers(decision.certainty, decision.confidence))
    elif cached is not None:
        headers["x-gateway-cache"] = "hit" if cached else "miss"
    return headers


def certainty_headers(certainty: ScoreResult | None, confidence: float | None) -> dict[str, str]:
    if certainty is None:
        return {}
    score = str(certainty.score) if isinstance(certainty, Certainty) else "none"
    return {
        "x-certainty-score": score,
        # Every digit (the shortest text that reads back as the same float): the number the policy
        # compared, so a header always shows why a threshold decided.
        "x-certainty-confidence": repr(confidence) if confidence is not None else "none",
    }


def completion_headers(completion: Completion) -> dict[str, str]:
    return {
        "x-gateway-policy": completion.policy,
        "x-gateway-action": completion.action.value,
        "x-gateway-cache": "hit" if completion.cached else "miss",
        **certainty_headers(completion.certainty, completion.confidence),
    }


def completion_header_list(completion: Completion) -> list[tuple[bytes, bytes]]:
    """`completion_headers` as ASGI wants them."""
    headers = completion_headers(completion)
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def certainty_object(completion: Completion) -> dict[str, Any]:
    """The `certainty` object of a response body or of a stream's last chunk."""
    scored = completion.certainty.as_dict()
    body: dict[str, Any] = {
        "score": scored["score"],
        "confidence": scored["confidence"],
        "expected_confidence": scored["expected_confidence"],
        "distribution": scored["distribution"],
        "mode": scored["mode"],
        "action": completion.action.value,
        "policy": completion.policy,
        "served_by": completion.served_by,
        "cached": completion.cached,
        "local_usage": completion.local_usage.as_dict(),
    }
    if completion.escalation_cost is not None:
        body["escalation_cost"] = completion.escalation_cost
    if completion.escalation_error is not None:
        body["escalation_error"] = completion.escalation_error
    return body


def answer_fields(completion: Completion) -> dict[str, Any]:
    """A `chat.completion` body's fields after its `id`, `object` and `created`."""
    return {
        "model": completion.policy,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage.as_dict(),
        "system_fingerprint": None,
        "certainty": certainty_object(completion),
    }


Rendered = tuple[bytes, list[tuple[bytes, bytes]]]
"""`answer_fields` serialized, less its opening brace, and the answer's headers."""


class Answers:
    """Chat answers as response bytes: `chat.completion` bodies and the decision's headers.

    Only a body's `id` and `created` differ from one answer of a decision to the next, so the
    rest is serialized once per decision object: a cached decision is decoded once and then
    served to every hit on its entry (`Pipeline`), and the last `size` of them are kept rendered.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._rendered: OrderedDict[int, tuple[Completion, Rendered]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rendered)

    def answer(self, completion: Completion) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The response body (a new id, the time now) and headers of `completion`."""
        fields, headers = self._render(completion)
        head = b'{"id":"%s","object":"chat.completion","created":%d,' % (
            completion_id().encode(),
            int(time.time()),
        )
        return head + fields, headers

    def _render(self, completion: Completion) -> Rendered:
        if not completion.cached:  # a decision made now: served once
            return _rendered(completion)
        made = self._rendered.get(id(completion))
        if made is not None and made[0] is completion:  # the entry holds it: its id is its own
            self._rendered.move_to_end(id(completion))
            return made[1]
        rendered = _rendered(completion)
        self._rendered[id(completion)] = (completion, rendered)
        if len(self._rendered) > self.size:
            self._rendered.popitem(last=False)
        return rendered


def _rendered(completion: Completion) -> Rendered:
    return orjson.dumps(answer_fields(completion))[1:], completion_header_list(completion)


class ChunkWriter:
    """Builds the `data: ...` lines of one streamed completion."""

    def __init__(self, policy: str, *, include_usage: bool) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.policy = policy
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.policy,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        if self.include_usage and "usage" not in body:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def text(self, text: str) -> bytes:
        delta = {"content": text}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def finish(self, completion: Completion) -> list[bytes]:
        certainty = certainty_object(completion)
        choice = {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": completion.finish_reason,
        }
        lines = [self._chunk([choice], certainty=certainty)]
        if self.include_usage:
            lines.append(self._chunk([], usage=completion.usage.as_dict(), certainty=certainty))
        lines.append(b"data: [DONE]\n\n")
        return lines

    def error(self, message: str, error_type: str, code: str | None) -> bytes:
        body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        return b"data: " + orjson.dumps(body) + b"\n\n"
