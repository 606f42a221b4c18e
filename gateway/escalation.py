"""Escalation to a larger model through a LiteLLM router.

The router is built from `escalation.model_list`, in LiteLLM's own format, so an existing LiteLLM
config pastes in. Every call is bounded by `escalation.timeout_s` as a whole (retries included);
only errors that can pass on their own (time-outs, rate limits, 5xx) are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.config import EscalationSettings
from gateway.errors import EscalationFailed
from gateway.types import Document, FinishReason, Message, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EscalationReply:
    text: str
    finish_reason: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


@dataclass(frozen=True)
class EscalationDelta:
    """One piece of a streamed escalation; the last one has `reply` set."""

    text: str
    reply: EscalationReply | None = None


class Escalator(Protocol):
    """Sends a conversation to a named larger model."""

    @property
    def targets(self) -> set[str]: ...

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply: ...

    def stream(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> AsyncIterator[EscalationDelta]: ...


def upstream_messages(
    messages: Sequence[Message], documents: Sequence[Document]
) -> list[dict[str, str]]:
    """The conversation for an OpenAI-style upstream; documents travel in a system message."""
    out = [m.as_dict() for m in messages]
    if documents:
        lines = "\n".join(json.dumps(dict(d), ensure_ascii=False) for d in documents)
        note = (
            "Answer using these documents; if they do not hold the answer, say so.\n"
            f"<documents>\n{lines}\n</documents>"
        )
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _missing_key(litellm: Any, deployment: Mapping[str, Any]) -> str | None:
    """Why `deployment` (a `model_list` entry) cannot authenticate, if no API key reaches it:
    neither in its `litellm_params` nor in the environment variable its provider reads."""
    params = deployment.get("litellm_params") or {}
    model = str(params.get("model", ""))
    key = params.get("api_key")
    try:
        provider = str(litellm.get_llm_provider(model)[1])
    except Exception:  # a model LiteLLM cannot place fails with its own error
        return None
    if isinstance(key, str) and key.startswith("os.environ/"):
        variable = key.removeprefix("os.environ/")
        missing = [] if os.environ.get(variable) else [variable]
    elif key:
        return None
    else:
        found = litellm.validate_environment(model=model, api_base=params.get("api_base"))
        missing = list(found.get("missing_keys") or [])
    if not missing:
        return None
    return f"no API key for provider {provider} (set {' or '.join(missing)})"


def _finish(reason: Any) -> FinishReason | str:
    return str(reason) if reason else "stop"


class LiteLLMEscalator:
    """`Escalator` over `litellm.Router`, with a hard deadline on every call."""

    def __init__(self, settings: EscalationSettings) -> None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm
        from litellm import Router
        from litellm.types.router import RetryPolicy

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        retries = settings.num_retries
        self._settings = settings
        self._litellm = litellm
        self._targets = {str(m["model_name"]) for m in settings.model_list if "model_name" in m}
        self._missing_keys = {
            str(m["model_name"]): missing
            for m in settings.model_list
            if "model_name" in m and (missing := _missing_key(litellm, m)) is not None
        }
        self._router = Router(
            model_list=[dict(m) for m in settings.model_list],
            num_retries=retries,
            timeout=settings.timeout_s,
            stream_timeout=settings.timeout_s,
            fallbacks=[dict(f) for f in settings.fallbacks] or None,
            retry_policy=RetryPolicy(
                BadRequestErrorRetries=0,
                AuthenticationErrorRetries=0,
                ContentPolicyViolationErrorRetries=0,
                NotFoundErrorRetries=0,
                TimeoutErrorRetries=retries,
                RateLimitErrorRetries=retries,
                InternalServerErrorRetries=retries,
                ServiceUnavailableErrorRetries=retries,
            ),
            retry_after=0,
            disable_cooldowns=True,
        )

    @property
    def targets(self) -> set[str]:
        return set(self._targets)

    @property
    def timeout_s(self) -> float:
        return self._settings.timeout_s

    def _check_target(self, target: str) -> None:
        if target not in self._targets:
            raise EscalationFailed(f"no escalation model named {target!r} is configured")

    @contextlib.contextmanager
    def _translated(self, target: str, *, deadline: bool) -> Iterator[None]:
        """Any failure inside as one `EscalationFailed` that says what went wrong and hides the
        provider's text (it may echo the request). `deadline`: our time limit runs inside."""
        try:
            yield
        except TimeoutError as exc:
            if not deadline:
                raise EscalationFailed(f"escalation to {target!r} timed out mid-answer") from exc
            raise EscalationFailed(
                f"escalation to {target!r} timed out after {self._settings.timeout_s:g} s"
            ) from exc
        except Exception as exc:  # LiteLLM raises many provider-specific types
            missing = self._missing_keys.get(target)
            if missing is not None:
                raise EscalationFailed(missing) from exc
            when = "" if deadline else " mid-answer"
            raise EscalationFailed(
                f"escalation to {target!r} failed{when}: {type(exc).__name__}"
            ) from exc

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply:
        self._check_target(target)
        with self._translated(target, deadline=True):
            async with asyncio.timeout(self._settings.timeout_s):
                response: Any = await self._router.acompletion(
                    model=target,
                    messages=upstream_messages(messages, documents),
                    **sampling.openai_kwargs(),
                )
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        return EscalationReply(
            text=str(choice.message.content or ""),
            finish_reason=_finish(choice.finish_reason),
            model=str(getattr(response, "model", None) or target),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost=self._cost(response),
        )

    async def stream(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> AsyncIterator[EscalationDelta]:
        """Upstream chunks as they come; the connection and first chunk are under the deadline."""
        self._check_target(target)
        parts: list[str] = []
        finish: str = "stop"
        model = target
        prompt_tokens = completion_tokens = 0
        with self._translated(target, deadline=True):
            async with asyncio.timeout(self._settings.timeout_s):
                response: Any = await self._router.acompletion(
                    model=target,
                    messages=upstream_messages(messages, documents),
                    stream=True,
                    stream_options={"include_usage": True},
                    **sampling.openai_kwargs(),
                )
                chunks = aiter(response)
                first = await anext(chunks, None)

        async def rest() -> AsyncIterator[Any]:
            if first is not None:
                yield first
            async for chunk in chunks:
                yield chunk

        with self._translated(target, deadline=False):  # the upstream may break mid-answer
            async for chunk in rest():
                model = str(getattr(chunk, "model", None) or model)
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or prompt_tokens)
                    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
                for choice in getattr(chunk, "choices", None) or []:
                    text = getattr(choice.delta, "content", None) or ""
                    if choice.finish_reason:
                        finish = _finish(choice.finish_reason)
                    if text:
                        parts.append(text)
                        yield EscalationDelta(text=text)
        text = "".join(parts)
        cost = self._stream_cost(model, messages, text)
        yield EscalationDelta(
            text="",
            reply=EscalationReply(
                text=text,
                finish_reason=finish,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost=cost,
            ),
        )

    def _cost(self, response: Any) -> float | None:
        try:
            return float(self._litellm.completion_cost(completion_response=response))
        except Exception:  # no price known for this model: report none, not zero
            return None

    def _stream_cost(self, model: str, messages: Sequence[Message], text: str) -> float | None:
        try:
            return float(
                self._litellm.completion_cost(
                    model=model, messages=[m.as_dict() for m in messages], completion=text
                )
            )
        except Exception:
            return None
