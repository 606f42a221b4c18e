"""The batching worker on the miniature model: batches, early results, joins, overload, cancel."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from gateway.certainty import Certainty, ScoreResult
from gateway.engine.local import DecodeRow, LocalEngine, length_groups
from gateway.engine.worker import EngineWorker
from gateway.errors import ContextLengthExceeded, EngineFailure, NotReady, Overloaded
from gateway.types import ChatRequest, Generation, Message, SamplingParams

T = TypeVar("T")

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote about the river?",
    "Where is the moon when the sun is up in the sky over the old city?",
]
DOCUMENTS = ({"doc_id": "1", "text": "Paris is the capital of France."},)
# Sampling this hot almost never picks the end token: with this seed the miniature answers the
# full max_tokens (checked where it matters), a row that outlives every greedy one.
LONG = SamplingParams(max_tokens=200, temperature=50.0, seed=1)


def ask(question: str, sampling: SamplingParams | None = None, **extra: Any) -> ChatRequest:
    return ChatRequest(
        messages=(Message(role="user", content=question),),
        sampling=sampling or SamplingParams(max_tokens=12),
        **extra,
    )


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


@asynccontextmanager
async def started(engine: LocalEngine, **settings: Any) -> AsyncIterator[EngineWorker]:
    worker = EngineWorker(engine, **settings)
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def same_score(a: ScoreResult, b: ScoreResult) -> None:
    assert isinstance(a, Certainty)
    assert isinstance(b, Certainty)
    assert a.score == b.score
    assert a.distribution == pytest.approx(b.distribution, abs=1e-5)


async def first_piece(pieces: list[str]) -> None:
    while not pieces:
        await asyncio.sleep(0.002)


def test_concurrent_answers_and_scores_share_one_batch(engine: LocalEngine) -> None:
    async def scenario() -> EngineWorker:
        # The batch closes as soon as it is full: the long wait is never spent.
        async with started(engine, max_batch_size=6, batch_wait_ms=5000) as worker:
            messages = (Message(role="user", content=QUESTIONS[0]),)
            await asyncio.gather(
                *(worker.generate(ask(q)) for q in QUESTIONS),
                worker.score(messages, "Paris.", mode="logits"),
                worker.score(messages, "Lyon.", mode="logits"),
                worker.score(messages, "Paris.", mode="generate"),
            )
            return worker

    worker = run(scenario)
    assert worker.batches_run == 1
    assert worker.rows_run == 6


def test_batched_results_equal_one_at_a_time_results(engine: LocalEngine) -> None:
    requests = [ask(q) for q in QUESTIONS] + [ask(QUESTIONS[0], documents=DOCUMENTS)]
    messages = (Message(role="user", content=QUESTIONS[0]),)
    answers = ["Paris.", "It is Lyon, a big city.", "No."]

    async def scenario() -> tuple[list[Generation], list[ScoreResult], list[ScoreResult]]:
        async with started(engine, max_batch_size=10, batch_wait_ms=5000) as worker:
            generations = asyncio.gather(*(worker.generate(r) for r in requests))
            by_logits = asyncio.gather(*(worker.score(messages, a, mode="logits") for a in answers))
            by_decoding = asyncio.gather(
                *(worker.score(messages, a, DOCUMENTS, mode="generate") for a in answers)
            )
            return await generations, await by_logits, await by_decoding

    generations, by_logits, by_decoding = run(scenario)
    for request, batched in zip(requests, generations, strict=True):
        assert batched == engine.generate(request)
    for answer, batched_score in zip(answers, by_logits, strict=True):
        same_score(batched_score, engine.score(messages, answer, mode="logits"))
    for answer, batched_score in zip(answers, by_decoding, strict=True):
        assert batched_score == engine.score(messages, answer, DOCUMENTS, mode="generate")


def test_a_short_row_resolves_before_the_longest_row_finishes(engine: LocalEngine) -> None:
    async def scenario() -> tuple[bool, Generation, Generation, EngineWorker]:
        async with started(engine, max_batch_size=2, batch_wait_ms=5000) as worker:
            long = asyncio.ensure_future(worker.generate(ask(QUESTIONS[1], LONG)))
            short = await worker.generate(ask(QUESTIONS[0], SamplingParams(max_tokens=1)))
            long_still_running = not long.done()
            return long_still_running, short, await long, worker

    long_still_running, short, long, worker = run(scenario)
    assert worker.batches_run == 1
    assert short.completion_tokens == 1
    assert long.finish_reason == "length"
    assert long.completion_tokens == LONG.max_tokens
    assert long_still_running


def test_requests_arriving_mid_decode_join_the_running_batch(engine: LocalEngine) -> None:
    late = ask(QUESTIONS[2])
    messages = (Message(role="user", content=QUESTIONS[0]),)

    async def scenario() -> tuple[bool, Generation, ScoreResult, EngineWorker]:
        async with started(engine, max_batch_size=4, batch_wait_ms=1) as worker:
            pieces: list[str] = []
            long = asyncio.ensure_future(worker.generate(ask(QUESTIONS[1], LONG), pieces.append))
            await first_piece(pieces)  # the long row is decoding now
            joined, scored = await asyncio.gather(
                worker.generate(late), worker.score(messages, "Paris.", mode="logits")
            )
            long_still_running = not long.done()
            await long
            return long_still_running, joined, scored, worker

    long_still_running, joined, scored, worker = run(scenario)
    assert long_still_running
    assert worker.batches_run == 1
    assert worker.rows_joined == 1  # the answer; the one-pass score ran between two steps
    assert worker.rows_run == 3
    assert joined == engine.generate(late)
    same_score(scored, engine.score(messages, "Paris.", mode="logits"))


async def queued(worker: EngineWorker, jobs: int) -> None:
    """Until `jobs` wait in the queue (each prompt is built on a thread first)."""
    async with asyncio.timeout(30):
        while worker.queue_depth < jobs:
            await asyncio.sleep(0.005)


def test_a_full_queue_is_refused_at_once_with_overloaded(engine: LocalEngine) -> None:
    async def scenario() -> None:
        worker = EngineWorker(engine, queue_size=2)  # not started: nothing leaves the queue
        waiting = [asyncio.ensure_future(worker.generate(ask(q))) for q in QUESTIONS[:2]]
        await queued(worker, 2)  # prompts are built on a thread, then queued
        started_at = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await worker.generate(ask(QUESTIONS[2]))
        assert time.perf_counter() - started_at < 0.5
        assert refused.value.retry_after > 0
        await worker.stop()
        for job in waiting:
            with pytest.raises(NotReady):
                await job

    run(scenario)


def test_the_score_of_an_admitted_answer_is_queued_even_when_the_queue_is_full(
    engine: LocalEngine,
) -> None:
    async def scenario() -> None:
        worker = EngineWorker(engine, queue_size=1)  # not started: nothing leaves the queue
        waiting = asyncio.ensure_future(worker.generate(ask(QUESTIONS[0])))
        await queued(worker, 1)
        scoring = asyncio.ensure_future(worker.score([Message("user", QUESTIONS[1])], "Paris."))
        await queued(worker, 2)
        assert not scoring.done()  # queued, not refused
        with pytest.raises(Overloaded):  # a new answer still is refused
            await worker.generate(ask(QUESTIONS[2]))
        await worker.stop()
        for job in (waiting, scoring):
            with pytest.raises(NotReady):
                await job

    run(scenario)


def test_a_cancelled_request_stops_its_row(engine: LocalEngine) -> None:
    async def scenario() -> tuple[int, int, EngineWorker]:
        async with started(engine, max_batch_size=2, batch_wait_ms=1) as worker:
            pieces: list[str] = []
            doomed = asyncio.ensure_future(worker.generate(ask(QUESTIONS[1], LONG), pieces.append))
            await first_piece(pieces)
            doomed.cancel()
            at_cancel = len(pieces)
            await worker.generate(ask(QUESTIONS[0]))  # the worker has moved on
            while worker.rows_cancelled == 0:
                await asyncio.sleep(0.002)
            await worker.generate(ask(QUESTIONS[2]))
            return at_cancel, len(pieces), worker

    at_cancel, at_end, worker = run(scenario)
    assert worker.rows_cancelled == 1
    assert at_end <= at_cancel + 2  # at most the steps already under way
    assert at_end < LONG.max_tokens


def test_the_event_loop_keeps_ticking_while_the_model_runs(engine: LocalEngine) -> None:
    async def scenario() -> tuple[float, float, int]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.005)

        async with started(engine, max_batch_size=4, batch_wait_ms=1) as worker:
            ticking = asyncio.ensure_future(ticker())
            begun = time.perf_counter()
            await asyncio.gather(
                worker.generate(ask(QUESTIONS[1], LONG)),
                worker.score((Message(role="user", content=QUESTIONS[0]),), "Paris."),
            )
            elapsed = time.perf_counter() - begun
            stop.set()
            await ticking
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        return elapsed, max(gaps), len(ticks)

    elapsed, longest_gap, ticks = run(scenario)
    # Had the loop run the model, one gap would span the whole generation.
    assert longest_gap < elapsed / 4
    assert ticks >= 20


def test_a_prompt_that_cannot_be_built_fails_alone(engine: LocalEngine) -> None:
    too_long = ask("river " * 5000)

    async def scenario() -> list[Generation | BaseException]:
        async with started(engine, max_batch_size=2, batch_wait_ms=5000) as worker:
            return await asyncio.gather(
                worker.generate(too_long),
                worker.generate(ask(QUESTIONS[0])),
                return_exceptions=True,
            )

    failed, answered = run(scenario)
    assert isinstance(failed, ContextLengthExceeded)
    assert isinstance(answered, Generation)


def test_a_model_failure_fails_its_batch_and_the_worker_keeps_serving(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.score_logits
    calls = 0

    def flaky(prompts: Any) -> list[ScoreResult]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(prompts)

    monkeypatch.setattr(engine, "score_logits", flaky)
    messages = (Message(role="user", content=QUESTIONS[0]),)

    async def scenario() -> ScoreResult:
        async with started(engine) as worker:
            with pytest.raises(EngineFailure):
                await worker.score(messages, "Paris.", mode="logits")
            return await worker.score(messages, "Paris.", mode="logits")

    assert isinstance(run(scenario), Certainty)


def test_a_stopped_worker_refuses_new_requests(engine: LocalEngine) -> None:
    async def scenario() -> None:
        async with started(engine) as worker:
            await worker.generate(ask(QUESTIONS[0]))
        with pytest.raises(NotReady):
            await worker.generate(ask(QUESTIONS[0]))

    run(scenario)


def test_prompts_of_similar_length_share_a_pass_and_outliers_get_their_own() -> None:
    assert length_groups([53, 58, 72, 76]) == [[0, 1, 2, 3]]
    assert length_groups([50, 2000, 60, 55]) == [[0, 3, 2], [1]]
    assert length_groups([]) == []


def test_rows_of_very_different_lengths_decode_as_they_do_alone(engine: LocalEngine) -> None:
    long_question = "Tell me about the river and the old city. " * 15
    prompts = [
        engine.render([{"role": "user", "content": q}])
        for q in (QUESTIONS[0], long_question, QUESTIONS[2])
    ]
    assert len(length_groups([len(p) for p in prompts])) == 2
    greedy = SamplingParams(max_tokens=8)
    engine.decode([DecodeRow(prompts[0], greedy, adapter=False)])  # the cache layout is known
    together = engine.decode([DecodeRow(p, greedy, adapter=i == 1) for i, p in enumerate(prompts)])
    alone = [
        engine.decode([DecodeRow(p, greedy, adapter=i == 1)])[0] for i, p in enumerate(prompts)
    ]
    assert together == alone
    scored = engine.digit_distributions(prompts)
    for prompt, distribution in zip(prompts, scored, strict=True):
        assert distribution == pytest.approx(engine.digit_distributions([prompt])[0], abs=1e-5)
