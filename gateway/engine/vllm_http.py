"""The HTTP transport to the model server: one pooled client, deadlines, one retry, errors.

Every call has a deadline (the whole call, or, streamed, each gap between data lines; vLLM's
`: keep-alive` comments do not count), a failed connection or a 5xx is tried `retries` more
times, and what still fails raises `RemoteEngineFailed` (HTTP 502) with a message that says why.
vLLM's answers are mapped once, in `http_error`: a prompt that fills the served context is the
client's `ContextLengthExceeded` (400), a 429/503 is our `Overloaded` (503 with Retry-After), a
400 naming `logprob_token_ids` is `FieldRefused`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.engine.vllm_protocol import (
    DIGIT_IDS_FIELD,
    FieldRefused,
    RemoteEngineFailed,
    error_message,
    error_param,
    json_object,
)
from gateway.errors import ContextLengthExceeded, GatewayError, Overloaded

__all__ = ["API_KEY_HINT", "VllmTransport", "openai_base_url", "why"]

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
API_KEY_HINT = "set engine.vllm_api_key (GATEWAY_ENGINE__VLLM_API_KEY) to vLLM's --api-key"
_CONTEXT_HINTS = ("maximum context length", "context length", "too long", "max_model_len")
_NO_ROOM_LEFT = "max_tokens must be at least 1"
"""vLLM's answer when the prompt alone is exactly the context: no token is left to generate."""
_MAX_TOKENS_TOO_LARGE = "cannot be greater than max_model_len"


def openai_base_url(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both mean `http://host:8000/v1`."""
    url = url.rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


class VllmTransport:
    """JSON calls and server-sent-event streams to an OpenAI-compatible server."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout_s: float = 60.0,
        retries: int = 1,
        max_connections: int = 256,
        api_key: str | None = None,
    ) -> None:
        self.base_url = openai_base_url(base_url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.in_flight = 0
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {api_key}"} if api_key else None,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    @asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON call under the deadline, tried once more on a failed connection or a 5xx."""
        async with self._tracked():
            try:
                async with asyncio.timeout(self.timeout_s):
                    for attempt in range(self.retries + 1):
                        response = await self._send(path, body, attempt)
                        if response is None:
                            continue
                        if response.status_code < 400:
                            return json_object(response.content)
                        if not self._again(response, attempt):
                            raise self.http_error(response, body)
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise self._timed_out() from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON chunks of a server-sent-event stream; each must come within the deadline."""
        loop = asyncio.get_running_loop()
        async with self._tracked():
            try:
                async with asyncio.timeout(self.timeout_s) as deadline:
                    response = await self._open_stream(path, body)
                    try:
                        async for line in response.aiter_lines():
                            # Only data moves the deadline: vLLM's `--sse-keep-alive-interval`
                            # comments (`: keep-alive`) come however long the answer stalls.
                            if not line.startswith("data:"):
                                continue
                            deadline.reschedule(loop.time() + self.timeout_s)
                            data = line[len("data:") :].strip()
                            if data == "[DONE]":
                                return
                            chunk = json_object(data.encode())
                            if "error" in chunk:
                                raise RemoteEngineFailed(
                                    f"the model server failed mid-answer: {error_message(chunk)}"
                                )
                            yield chunk
                    except httpx.TransportError as exc:
                        if isinstance(exc, httpx.TimeoutException):
                            raise
                        raise RemoteEngineFailed(
                            f"the model server broke off the answer ({why(exc)})"
                        ) from exc
                    finally:
                        await response.aclose()
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise self._timed_out() from exc

    async def _open_stream(self, path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response = await self._send(path, body, attempt, stream=True)
            if response is None:
                continue
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            if not self._again(response, attempt):
                raise self.http_error(response, body)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(
        self, path: str, body: dict[str, Any], attempt: int, *, stream: bool = False
    ) -> httpx.Response | None:
        """Send; `None` means "the connection failed, try again"."""
        request = self.client.build_request("POST", path, json=body)
        try:
            return await self.client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            if attempt < self.retries:
                log.info("model server unreachable (%s); trying again", type(exc).__name__)
                return None
            raise RemoteEngineFailed(
                f"the model server at {self.base_url} could not be reached ({why(exc)})"
            ) from exc

    def _again(self, response: httpx.Response, attempt: int) -> bool:
        """Whether a failed answer is worth one more try."""
        if response.status_code in RETRYABLE_STATUS and attempt < self.retries:
            log.info("model server answered %s; trying again", response.status_code)
            return True
        return False

    def _timed_out(self) -> RemoteEngineFailed:
        return RemoteEngineFailed(
            f"the model server at {self.base_url} did not answer within {self.timeout_s:g} s"
        )

    def http_error(self, response: httpx.Response, body: dict[str, Any]) -> GatewayError:
        """The gateway's error for a failed answer of the model server."""
        status = response.status_code
        param = ""
        try:
            payload = json.loads(response.content)
            message = error_message(payload)
            param = error_param(payload)
        except ValueError:
            message = response.text
        message = " ".join(message.split())[:300] or response.reason_phrase
        lowered = message.lower()
        if status == 400 and _NO_ROOM_LEFT in lowered:
            return ContextLengthExceeded(
                "the conversation fills the model's whole context; no token is left for the "
                f"answer (the model server: {message})",
                param="messages",
            )
        if status == 400 and _MAX_TOKENS_TOO_LARGE in lowered:
            return ContextLengthExceeded(
                f"max_tokens is larger than the model's context: {message}", param="max_tokens"
            )
        if status == 400 and any(hint in lowered for hint in _CONTEXT_HINTS):
            return ContextLengthExceeded(
                f"the conversation does not fit the model's context: {message}", param="messages"
            )
        if status == 400 and (DIGIT_IDS_FIELD in param or DIGIT_IDS_FIELD in message):
            return FieldRefused(
                f"the model server refused {DIGIT_IDS_FIELD} (HTTP 400: {message})",
                field=DIGIT_IDS_FIELD,
            )
        if status in (429, 503):
            retry_after = _retry_after(response.headers.get("retry-after"))
            return Overloaded(
                f"the model server is busy (HTTP {status}); retry shortly",
                retry_after=retry_after,
            )
        if status == 401:
            return RemoteEngineFailed(
                f"the model server refused the gateway's credentials (HTTP 401); {API_KEY_HINT}"
            )
        if status == 404:
            return RemoteEngineFailed(
                f"the model server does not serve {body.get('model')!r} (HTTP 404: {message}); "
                "check engine.vllm_base_model / engine.vllm_adapter_model against vLLM's "
                "--served-model-name and --lora-modules"
            )
        return RemoteEngineFailed(f"the model server failed (HTTP {status}: {message})")


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0


def why(exc: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
