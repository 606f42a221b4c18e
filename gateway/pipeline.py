"""The request path: cache look-up, generate, score, decide, act, cache store. Nothing else.

Each step is a plain call on a component built in the app's lifespan: the engine (`LocalEngine`
behind its worker), the policy store, the escalator and the decision cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

from gateway.cache.base import DecisionCache
from gateway.cache.key import cache_key, is_cacheable
from gateway.cache.singleflight import Lookup, SingleFlight, Uncached
from gateway.certainty import ScoreResult
from gateway.completion import (
    Completion,
    Decided,
    Final,
    StreamEvent,
    TextDelta,
    Usage,
    decided,
    replay,
)
from gateway.engine.base import AsyncEngine
from gateway.errors import EscalationFailed, ModelNotFound
from gateway.escalation import EscalationReply, Escalator
from gateway.metrics import Metrics
from gateway.policy import Action, Policy, PolicyStore, decide, policy_confidence
from gateway.record import Recorder, StageTimer
from gateway.stats.recorder import StatsRecorder
from gateway.types import ChatRequest, Generation

__all__ = [  # the answer types, also importable from here
    "Completion",
    "CompletionInput",
    "Decided",
    "Final",
    "Pipeline",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "decided",
]

log = logging.getLogger(__name__)

DECODED_HITS = 256
"""How many cached decisions are kept decoded (by their bytes) for the hits that follow."""


@dataclass(frozen=True)
class CompletionInput:
    """A chat request as the pipeline sees it: the policy alias, the conversation, the tenant."""

    policy: str
    request: ChatRequest
    tenant: str | None = None


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
        self.record = Recorder(self.metrics, stats)
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

    def _landed(self, lookup: Lookup, inp: CompletionInput) -> Completion | None:
        """The decision a flight brought to a caller that did not compute it (counted as a hit or
        a miss); None for a cached entry this gateway cannot read."""
        if not lookup.cached:  # a fresh decision, observed where it was made
            self.metrics.cache_miss.inc()
            return Completion.from_json(lookup.value, cached=False)
        completion = self._read_hit(lookup.value)
        if completion is not None:
            self.record.observe(inp, completion, None)
        return completion

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

    async def _store(self, key: str, completion: Completion) -> None:
        if completion.escalation_error is None:
            await self.cache.set(key, completion.to_json(), self.cache_ttl_s)

    async def _decided_once(
        self, key: str, policy: Policy, inp: CompletionInput
    ) -> Completion | None:
        """Single flight: concurrent identical misses decide once (across replicas too, with
        Redis); a fallback after a failed escalation is served to the flight, not remembered.
        The caller that decides gets its own decision; the others get it as `_landed` reads it."""
        made: Completion | None = None

        async def compute() -> bytes | Uncached:
            nonlocal made
            made = await self._decide(policy, inp)
            return _flight_value([Final(made)])

        lookup = await self.flights.get_or_compute(key, compute, ttl_s=self.cache_ttl_s)
        if made is not None and not lookup.cached:  # decided here, and observed where it was
            self.metrics.cache_miss.inc()
            return made
        return self._landed(lookup, inp)

    def _prepared(self, inp: CompletionInput) -> tuple[Policy, CompletionInput, str | None]:
        """The policy `inp` names, `inp` within the policy's token cap, and its cache key."""
        policy = self.policy(inp.policy)
        inp = self._capped(policy, inp)
        return policy, inp, self.key(policy, inp)

    # ------------------------------------------------------------- non-streaming

    async def complete(self, inp: CompletionInput) -> Completion:
        policy, inp, key = self._prepared(inp)
        if key is None:
            return await self._decide(policy, inp)
        completion = await self._decided_once(key, policy, inp)
        if completion is None:  # an unreadable entry: decide afresh and overwrite it
            completion = await self._decide(policy, inp)
            await self._store(key, completion)
        return completion

    async def _decide(self, policy: Policy, inp: CompletionInput) -> Completion:
        timer = StageTimer()
        local = await self._generate_and_decide(policy, inp.request, timer)
        if local.action is Action.ESCALATE:
            local = await timer.time("escalate", self._escalate(policy, inp.request, local))
        self.record.observe(inp, local, timer)
        return local

    async def _generate_and_decide(
        self,
        policy: Policy,
        request: ChatRequest,
        timer: StageTimer,
        on_text: Callable[[str], None] | None = None,
    ) -> Completion:
        """The local answer, its certainty and the policy's action on it (not yet acted on)."""
        generation: Generation = await timer.time(
            "generate", self.engine.generate(request, on_text=on_text)
        )
        certainty: ScoreResult = await timer.time(
            "score", self.engine.score(request.messages, generation.text, request.documents)
        )
        action = decide(policy, certainty)
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
        self.record.escalation(local.policy, "ok", reply.cost)
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
        self.record.escalation(policy.name, "error")
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
        escalated answer streams the upstream's chunks as they come. Identical concurrent misses
        share one flight, as in `complete`: the caller that computes streams live, the others get
        the decision replayed.
        """
        policy, inp, key = self._prepared(inp)
        if key is None:
            async for event in self._stream_fresh(policy, inp):
                yield event
            return
        lookup: Lookup | None = None
        led = False
        flight = self.flights.get_or_stream(
            key, lambda: self._stream_fresh(policy, inp), _flight_value, ttl_s=self.cache_ttl_s
        )
        async with contextlib.aclosing(flight):
            async for item in flight:
                if isinstance(item, Lookup):
                    lookup = item
                else:
                    led = True
                    yield item
        assert lookup is not None
        if led:
            self.metrics.cache_miss.inc()
            return
        completion = self._landed(lookup, inp)
        if completion is None:  # an unreadable entry: decide afresh and overwrite it
            completion = await self._decide(policy, inp)
            await self._store(key, completion)
        for event in replay(completion):
            yield event

    async def _stream_fresh(
        self, policy: Policy, inp: CompletionInput
    ) -> AsyncIterator[StreamEvent]:
        """A decision made now, as stream events; observed once it is made."""
        timer = StageTimer()
        if policy.always_returns:
            async for event in self._stream_local(policy, inp, timer):
                yield event
            return
        request = inp.request
        local = await self._generate_and_decide(policy, request, timer)
        if local.action is not Action.ESCALATE:
            self.record.observe(inp, local, timer)
            for event in replay(local):
                yield event
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
                    self.record.observe(inp, completion, timer)
                    yield Final(completion)
                    return
                yield TextDelta(delta.text)
        except EscalationFailed as exc:
            if started:  # the upstream broke mid-answer: the client already has part of it
                self.record.escalation(policy.name, "error")
                log.warning(
                    "escalation failed mid-answer; ending the stream with an error",
                    extra={"policy": policy.name, "reason": exc.message},
                )
                raise
            fallback = self._escalation_failed(policy, local, exc)
            self.record.observe(inp, fallback, timer)
            for event in replay(fallback):
                yield event

    async def _stream_local(
        self, policy: Policy, inp: CompletionInput, timer: StageTimer
    ) -> AsyncIterator[StreamEvent]:
        """The local answer's text as it is generated, then its decision."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        deciding = asyncio.ensure_future(
            self._generate_and_decide(policy, inp.request, timer, on_text=pieces.put_nowait)
        )
        deciding.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield TextDelta(piece)
            completion = await deciding
        finally:
            if not deciding.done():
                deciding.cancel()
        self.record.observe(inp, completion, timer)
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


def _flight_value(events: list[StreamEvent]) -> bytes | Uncached:
    """The decision a streamed flight stores, from its `Final` event; a fallback after a failed
    escalation is served to the flight, not remembered."""
    final = events[-1]
    assert isinstance(final, Final)
    raw = final.completion.to_json()
    return Uncached(raw) if final.completion.escalation_error else raw
