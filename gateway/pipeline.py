"""The request path: cache look-up, generate, score, decide, act, cache store. Nothing else.

Each step is a plain call on a component built in the app's lifespan: the engine (`LocalEngine`
behind its worker), the policy store, the escalator and the decision cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.cache.base import DecisionCache
from gateway.cache.key import cache_key, is_cacheable
from gateway.cache.singleflight import SingleFlight, Uncached
from gateway.certainty import Certainty, ScoreResult, ScoringMode, Unscored
from gateway.engine.base import ChatRequest, Document, Generation, Message
from gateway.errors import EscalationFailed, ModelNotFound
from gateway.escalation import EscalationReply, Escalator
from gateway.metrics import Metrics
from gateway.policy import Action, Policy, PolicyStore, decide, policy_confidence
from gateway.stats.recorder import StatsRecorder, current_input

log = logging.getLogger(__name__)

DECODED_HITS = 256
"""How many cached decisions are kept decoded (by their bytes) for the hits that follow."""


class AsyncEngine(Protocol):
    """What the pipeline needs of the model: `EngineWorker` locally, `RemoteEngine` for vLLM."""

    @property
    def model_id(self) -> str: ...

    @property
    def served_name(self) -> str: ...

    @property
    def scoring_mode(self) -> ScoringMode: ...

    async def generate(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> Generation: ...

    async def score(
        self,
        messages: tuple[Message, ...] | list[Message],
        answer: str,
        documents: tuple[Document, ...] | list[Document] = (),
        mode: ScoringMode | None = None,
    ) -> ScoreResult: ...


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def fields(self) -> dict[str, int]:
        """The stored fields (`Usage(**usage.fields())` rebuilds it)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def as_dict(self) -> dict[str, int]:
        return {**self.fields(), "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Completion:
    """One decided request: what the client gets and why."""

    text: str
    finish_reason: str
    action: Action
    policy: str
    served_by: str
    certainty: ScoreResult
    confidence: float
    usage: Usage
    local_usage: Usage
    escalation_cost: float | None = None
    escalation_error: str | None = None
    cached: bool = False

    def certainty_object(self) -> dict[str, Any]:
        """The `certainty` object of the wire format."""
        scored = self.certainty.as_dict()
        body: dict[str, Any] = {
            "score": scored["score"],
            "confidence": scored["confidence"],
            "expected_confidence": scored["expected_confidence"],
            "distribution": scored["distribution"],
            "mode": scored["mode"],
            "action": self.action.value,
            "policy": self.policy,
            "served_by": self.served_by,
            "cached": self.cached,
            "local_usage": self.local_usage.as_dict(),
        }
        if self.escalation_cost is not None:
            body["escalation_cost"] = self.escalation_cost
        if self.escalation_error is not None:
            body["escalation_error"] = self.escalation_error
        return body

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "text": self.text,
                "finish_reason": self.finish_reason,
                "action": self.action.value,
                "policy": self.policy,
                "served_by": self.served_by,
                "certainty": self.certainty.as_dict(),
                "confidence": self.confidence,
                "usage": self.usage.fields(),
                "local_usage": self.local_usage.fields(),
                "escalation_cost": self.escalation_cost,
                "escalation_error": self.escalation_error,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes, *, cached: bool = True) -> Completion:
        data = orjson.loads(raw)
        scored = data["certainty"]
        certainty: ScoreResult
        if scored["score"] is None:
            certainty = Unscored(reply=scored.get("unscored_reply", ""), mode=scored["mode"])
        else:
            dist = scored["distribution"]
            certainty = Certainty(
                score=scored["score"],
                confidence=scored["confidence"],
                expected_confidence=scored["expected_confidence"],
                distribution=tuple(dist) if dist is not None else None,
                mode=scored["mode"],
            )
        return cls(
            text=data["text"],
            finish_reason=data["finish_reason"],
            action=Action(data["action"]),
            policy=data["policy"],
            served_by=data["served_by"],
            certainty=certainty,
            confidence=data["confidence"],
            usage=Usage(**data["usage"]),
            local_usage=Usage(**data["local_usage"]),
            escalation_cost=data["escalation_cost"],
            escalation_error=data["escalation_error"],
            cached=cached,
        )


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Decided:
    """The decision, known before any text is sent (for the response headers)."""

    action: Action
    certainty: ScoreResult | None
    confidence: float | None
    cached: bool


@dataclass(frozen=True)
class Final:
    completion: Completion


StreamEvent = Decided | TextDelta | Final


def decided(completion: Completion) -> Decided:
    return Decided(
        action=completion.action,
        certainty=completion.certainty,
        confidence=completion.confidence,
        cached=completion.cached,
    )


@dataclass(frozen=True)
class CompletionInput:
    """A chat request as the pipeline sees it: the policy alias, the conversation, the tenant."""

    policy: str
    request: ChatRequest
    tenant: str | None = None


@dataclass
class _Timer:
    """Per-stage latencies of one request, for metrics."""

    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    async def time(self, stage: str, work: Any) -> Any:
        begun = time.perf_counter()
        try:
            return await work
        finally:
            self.stages[stage] = time.perf_counter() - begun


class Pipeline:
    """Generate, score, decide, act; with the decision cache around it."""

    def __init__(
        self,
        engine: AsyncEngine,
        policies: PolicyStore,
        escalator: Escalator,
        cache: DecisionCache,
        *,
        cache_ttl_s: int,
        flights: SingleFlight | None = None,
        metrics: Metrics | None = None,
        stats: StatsRecorder | None = None,
    ) -> None:
        self.engine = engine
        self.policies = policies
        self.escalator = escalator
        self.cache = cache
        self.cache_ttl_s = cache_ttl_s
        self.flights = flights or SingleFlight(cache, ttl_s=cache_ttl_s)
        self.metrics = metrics or Metrics()
        self.stats = stats
        # Hits on a popular entry bring the same bytes again and again: decode each once.
        self._decode = functools.lru_cache(maxsize=DECODED_HITS)(Completion.from_json)

    def policy(self, name: str) -> Policy:
        policy = self.policies.current.get(name)
        if policy is None:
            known = ", ".join(sorted(self.policies.current.policies))
            raise ModelNotFound(
                f"the model {name!r} does not exist; this gateway serves: {known}", param="model"
            )
        return policy

    def key(self, policy: Policy, inp: CompletionInput) -> str | None:
        """The cache key of `inp` under `policy`; None when the request is not cached."""
        sampling = inp.request.sampling
        if not policy.cache or not is_cacheable(
            sampling.temperature, sampling.seed, policy.cache_sampled
        ):
            return None
        return cache_key(
            policy_name=policy.name,
            policy_hash=self.policies.current.hashes.get(policy.name) or policy.content_hash(),
            model_id=self.engine.model_id,
            scoring_mode=self.engine.scoring_mode,
            messages=inp.request.message_dicts(),
            documents=[dict(d) for d in inp.request.documents],
            params=sampling.as_dict(),
            tenant=inp.tenant,
        )

    async def _lookup(self, key: str | None) -> Completion | None:
        if key is None:
            return None
        raw = await self.cache.get(key)
        if raw is None:
            self.metrics.cache_miss.inc()
            return None
        return self._read_hit(raw)

    def _read_hit(self, raw: bytes) -> Completion | None:
        """A cached decision, counted as a hit; None (counted as an error) for an entry this
        gateway cannot read, which the caller decides afresh and overwrites."""
        try:
            completion = self._decode(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("replacing an unreadable cache entry")
            self.metrics.cache_error.inc()
            return None
        self.metrics.cache_hit.inc()
        return completion

    async def _store(self, key: str | None, completion: Completion) -> None:
        if key is not None and completion.escalation_error is None:
            await self.cache.set(key, completion.to_json(), self.cache_ttl_s)

    # ------------------------------------------------------------- non-streaming

    async def complete(self, inp: CompletionInput) -> Completion:
        current_input.set(inp)
        policy = self.policy(inp.policy)
        inp = self._capped(policy, inp)
        key = self.key(policy, inp)
        if key is None:
            return await self._decide(policy, inp)

        async def compute() -> bytes | Uncached:
            completion = await self._decide(policy, inp)
            raw = completion.to_json()
            # A fallback after a failed escalation is served, but not remembered.
            return Uncached(raw) if completion.escalation_error else raw

        # Concurrent identical misses compute once (across replicas too, with Redis).
        lookup = await self.flights.get_or_compute(key, compute, ttl_s=self.cache_ttl_s)
        if not lookup.cached:
            self.metrics.cache_miss.inc()
            return Completion.from_json(lookup.value, cached=False)
        completion = self._read_hit(lookup.value)
        if completion is None:
            completion = await self._decide(policy, inp)
            await self._store(key, completion)
            return completion
        self._observe(completion, None)
        return completion

    async def _decide(self, policy: Policy, inp: CompletionInput) -> Completion:
        timer = _Timer()
        request = inp.request
        generation: Generation = await timer.time("generate", self.engine.generate(request))
        certainty: ScoreResult = await timer.time(
            "score", self.engine.score(request.messages, generation.text, request.documents)
        )
        action = decide(policy, certainty)
        local = self._local(policy, generation, certainty, action)
        if action is Action.ESCALATE:
            local = await timer.time("escalate", self._escalate(policy, request, local))
        self._observe(local, timer)
        return local

    def _local(
        self, policy: Policy, generation: Generation, certainty: ScoreResult, action: Action
    ) -> Completion:
        usage = Usage(generation.prompt_tokens, generation.completion_tokens)
        withheld = action is Action.WITHHOLD
        return Completion(
            text=policy.withhold_message if withheld else generation.text,
            finish_reason="content_filter" if withheld else generation.finish_reason,
            action=action,
            policy=policy.name,
            served_by="gateway" if withheld else self.engine.served_name,
            certainty=certainty,
            confidence=policy_confidence(policy, certainty),
            usage=usage,
            local_usage=usage,
        )

    async def _escalate(
        self, policy: Policy, request: ChatRequest, local: Completion
    ) -> Completion:
        assert policy.escalate_to is not None
        try:
            reply = await self.escalator.complete(
                policy.escalate_to, request.messages, request.documents, request.sampling
            )
        except EscalationFailed as exc:
            return self._escalation_failed(policy, local, exc)
        return self._escalated(local, reply)

    def _escalated(self, local: Completion, reply: EscalationReply) -> Completion:
        self.metrics.escalations.labels(local.policy, "ok").inc()
        if reply.cost is not None:
            self.metrics.escalation_cost.labels(local.policy).inc(reply.cost)
        return dataclasses.replace(
            local,
            text=reply.text,
            finish_reason=reply.finish_reason,
            served_by=reply.model,
            usage=Usage(reply.prompt_tokens, reply.completion_tokens),
            escalation_cost=reply.cost,
        )

    def _escalation_failed(
        self, policy: Policy, local: Completion, exc: EscalationFailed
    ) -> Completion:
        self.metrics.escalations.labels(policy.name, "error").inc()
        log.warning(
            "escalation failed; applying on_escalation_error",
            extra={
                "policy": policy.name,
                "reason": exc.message,
                "then": policy.on_escalation_error,
            },
        )
        if policy.on_escalation_error == "error":
            raise exc
        if policy.on_escalation_error == "return_local":
            return dataclasses.replace(local, action=Action.RETURN, escalation_error=exc.message)
        return dataclasses.replace(
            local,
            action=Action.WITHHOLD,
            text=policy.withhold_message,
            finish_reason="content_filter",
            served_by="gateway",
            escalation_error=exc.message,
        )

    # ----------------------------------------------------------------- streaming

    async def stream(self, inp: CompletionInput) -> AsyncGenerator[StreamEvent, None]:
        """Text as the client may see it, then the decided `Completion`.

        A policy that always returns streams the local tokens as they are generated. Any other
        policy holds the local answer until the decision, so a withheld text never leaves; an
        escalated answer streams the upstream's chunks as they come.
        """
        current_input.set(inp)
        policy = self.policy(inp.policy)
        inp = self._capped(policy, inp)
        key = self.key(policy, inp)
        hit = await self._lookup(key)
        if hit is not None:
            self._observe(hit, None)
            yield decided(hit)
            yield TextDelta(hit.text)
            yield Final(hit)
            return
        timer = _Timer()
        request = inp.request
        if policy.always_returns:
            completion: Completion | None = None
            async for event in self._stream_local(policy, request, timer):
                if isinstance(event, Final):
                    completion = event.completion
                yield event
            if completion is not None:
                await self._store(key, completion)
            return
        generation = await timer.time("generate", self.engine.generate(request))
        certainty = await timer.time(
            "score", self.engine.score(request.messages, generation.text, request.documents)
        )
        action = decide(policy, certainty)
        local = self._local(policy, generation, certainty, action)
        if action is not Action.ESCALATE:
            self._observe(local, timer)
            await self._store(key, local)
            yield decided(local)
            yield TextDelta(local.text)
            yield Final(local)
            return
        assert policy.escalate_to is not None
        begun = time.perf_counter()
        started = False
        try:
            upstream = self.escalator.stream(
                policy.escalate_to, request.messages, request.documents, request.sampling
            )
            async for delta in upstream:
                if not started:
                    started = True
                    yield decided(local)
                if delta.reply is not None:
                    timer.stages["escalate"] = time.perf_counter() - begun
                    completion = self._escalated(local, delta.reply)
                    self._observe(completion, timer)
                    await self._store(key, completion)
                    yield Final(completion)
                    return
                yield TextDelta(delta.text)
        except EscalationFailed as exc:
            if started:  # the upstream broke mid-answer: the client already has part of it
                raise
            fallback = self._escalation_failed(policy, local, exc)
            self._observe(fallback, timer)
            yield decided(fallback)
            yield TextDelta(fallback.text)
            yield Final(fallback)

    async def _stream_local(
        self, policy: Policy, request: ChatRequest, timer: _Timer
    ) -> AsyncIterator[StreamEvent]:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        generating = asyncio.ensure_future(
            timer.time("generate", self.engine.generate(request, on_text=pieces.put_nowait))
        )
        generating.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield TextDelta(piece)
            generation: Generation = await generating
        finally:
            if not generating.done():
                generating.cancel()
        certainty = await timer.time(
            "score", self.engine.score(request.messages, generation.text, request.documents)
        )
        completion = self._local(policy, generation, certainty, decide(policy, certainty))
        self._observe(completion, timer)
        yield Final(completion)

    # ------------------------------------------------------------------- helpers

    @staticmethod
    def _capped(policy: Policy, inp: CompletionInput) -> CompletionInput:
        cap = policy.max_tokens
        sampling = inp.request.sampling
        if cap is None or sampling.max_tokens <= cap:
            return inp
        capped = dataclasses.replace(sampling, max_tokens=cap)
        return dataclasses.replace(inp, request=dataclasses.replace(inp.request, sampling=capped))

    def _observe(self, completion: Completion, timer: _Timer | None) -> None:
        self.metrics.certainty_of(completion.policy).observe(completion.confidence)
        self.metrics.actions_of(completion.policy, completion.action.value).inc()
        if timer is not None:
            for stage, seconds in timer.stages.items():
                self.metrics.stage_latency_of(stage).observe(seconds)
        if self.stats is not None:
            self.stats.record(completion, timer.stages if timer is not None else None)
