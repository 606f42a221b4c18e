"""One thread owns the model; requests reach it through a bounded queue and are batched.

The event loop never runs the model: `generate` and `score` put a job on the queue and await a
future. The worker thread takes the first job, waits up to `batch_wait_ms` for more (up to
`max_batch_size`), then runs all the one-pass scores in one forward pass and all the decoding rows
(answers, with the adapter off, and `generate`-mode scores, with it on) in one shared decoding
loop. Each row's future is resolved as soon as that row finishes, and the row leaves the batch.
Between decoding steps the worker takes more jobs from the queue: one-pass scores run at once,
new decoding rows join the running batch while it has room (continuous batching), so a short
request does not wait for a long batch to end. A new answer finding `queue_size` jobs waiting is
refused at once (`Overloaded`); the score of an answer already made is always queued (refusing it
would throw the answer away), so the queue holds at most `queue_size` jobs plus one score per
request in flight. A cancelled future stops its row at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.certainty import MAX_REPLY_TOKENS, ScoreResult, ScoringMode, parse_reply
from gateway.engine.base import BatchEngine
from gateway.engine.rows import DecodeRow
from gateway.errors import EngineFailure, GatewayError, NotReady, Overloaded
from gateway.types import ChatRequest, Document, Generation, Message, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def resolve(self, value: Any) -> None:
        _call_soon(self.loop, _set_result, self.future, value)

    def fail(self, exc: BaseException) -> None:
        _call_soon(self.loop, _set_exception, self.future, exc)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand a result to the job's event loop; a loop that has closed meanwhile is ignored."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this job any more
        loop.call_soon_threadsafe(callback, *args)


@dataclass
class _GenerateJob(_Job):
    request: ChatRequest | None = None
    prompt: list[int] = field(default_factory=list)
    on_text: Callable[[str], None] | None = None


@dataclass
class _ScoreJob(_Job):
    prompt: list[int] = field(default_factory=list)
    mode: ScoringMode = "logits"


async def _build_prompt(build: Callable[..., list[int]], *args: Any) -> list[int]:
    """`build(*args)` on a thread; a failure that is not the client's (too long, bad documents
    are) becomes `EngineFailure`: the request fails alone."""
    try:
        return await asyncio.to_thread(build, *args)
    except GatewayError:
        raise
    except Exception as exc:
        log.warning("could not build a prompt", extra={"error": type(exc).__name__})
        raise EngineFailure(f"could not build the prompt: {type(exc).__name__}") from exc


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class EngineWorker:
    """Async front of a `BatchEngine` (`LocalEngine`): a bounded queue and one batching thread."""

    def __init__(
        self,
        engine: BatchEngine,
        *,
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        queue_size: int = 64,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.queue_size = queue_size
        self._queue: queue.Queue[_Job | None] = queue.Queue()  # bounded by `_submit`
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._stopping = False
        self._stop_seen = False
        self._running: list[_Job] = []
        self.batches_run = 0
        """Batches formed from the queue (each: one scoring pass and/or one decoding loop)."""
        self.rows_run = 0
        """Jobs run: answers and scores, in a formed batch or joined between steps."""
        self.rows_joined = 0
        """Decoding rows that joined a batch that was already decoding."""
        self.rows_cancelled = 0
        """Rows stopped because their caller went away."""

    # ------------------------------------------------------------ event loop

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def served_name(self) -> str:
        return self.engine.served_name

    @property
    def scoring_mode(self) -> ScoringMode:
        return self.engine.scoring_mode

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Refuse new jobs, finish the queued ones, and end the thread."""
        self._stopping = True
        if not self._thread.is_alive():  # never started: fail what waits
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    return
                if job is not None:
                    job.fail(NotReady("the model was stopped before it ran this request"))
        self._queue.put_nowait(None)
        await asyncio.to_thread(self._thread.join, 30.0)

    def _submit(self, job: _Job, *, admit: bool) -> None:
        """Queue `job`; `admit`: it starts a new request, refused while `queue_size` wait."""
        self._submit_check(admit=admit)
        self._queue.put_nowait(job)

    def _submit_check(self, *, admit: bool) -> None:
        """`NotReady` while stopping; `Overloaded` for a new request while `queue_size` wait
        (also asked before a prompt is built: a refused request costs no rendering)."""
        if self._stopping:
            raise NotReady("the model is shutting down; retry on another replica")
        if admit and self._queue.qsize() >= self.queue_size:
            raise Overloaded(
                "the model is busy: too many requests are waiting; retry shortly",
                retry_after=1.0,
            )

    async def generate(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> Generation:
        """The base model's answer (adapter off); `on_text` runs on the event loop.

        The prompt is rendered, tokenized and checked against the context here, on a thread of
        its own, before the job is queued: a huge prompt costs its own request's time, never the
        model thread's (which only runs the model)."""
        self._submit_check(admit=True)
        prompt = await _build_prompt(self.engine.answer_prompt, request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()
        relay = None
        if on_text is not None:
            callback = on_text

            def relay(text: str) -> None:
                _call_soon(loop, callback, text)

        self._submit(
            _GenerateJob(loop=loop, future=future, request=request, prompt=prompt, on_text=relay),
            admit=True,
        )
        return await future

    async def score(
        self,
        messages: Sequence[Message],
        answer: str,
        documents: Sequence[Document] = (),
        mode: ScoringMode | None = None,
    ) -> ScoreResult:
        """The adapter's rating of `answer` (adapter on); its prompt is built as `generate`'s."""
        self._submit_check(admit=False)
        prompt = await _build_prompt(self.engine.certainty_prompt, messages, answer, documents)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScoreResult] = loop.create_future()
        job = _ScoreJob(
            loop=loop, future=future, prompt=prompt, mode=mode or self.engine.scoring_mode
        )
        self._submit(job, admit=False)  # the answer it rates was admitted
        return await future

    # ---------------------------------------------------------- worker thread

    def _run(self) -> None:
        while not self._stop_seen:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    job = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if job is None:
                    self._stop_seen = True
                    break
                batch.append(job)
            live = [job for job in batch if not job.cancelled()]
            if not live:
                continue
            self._running = list(live)
            try:
                self._run_batch(live)
            except Exception as exc:  # a model failure must not kill the worker
                log.exception("engine batch failed")
                failure = EngineFailure(f"the local model failed: {type(exc).__name__}")
                for job in self._running:
                    job.fail(failure)
            finally:
                self._running = []

    def _run_batch(self, jobs: list[_Job]) -> None:
        self.batches_run += 1
        rows = self._prepare(jobs)
        if rows:
            self.engine.decode(rows, admit=self._admit, max_rows=self.max_batch_size)

    def _prepare(self, jobs: list[_Job]) -> list[DecodeRow]:
        """Run the one-pass scores of `jobs` now; return the decoding rows of the others.

        Prompts were built before the jobs were queued (`generate`, `score`).
        """
        engine = self.engine
        logits_jobs: list[tuple[_ScoreJob, list[int]]] = []
        rows: list[DecodeRow] = []
        for job in jobs:
            if isinstance(job, _GenerateJob):
                rows.append(self._answer_row(job, job.prompt))
            elif isinstance(job, _ScoreJob):
                if job.mode == "logits":
                    logits_jobs.append((job, job.prompt))
                else:
                    rows.append(self._score_row(job, job.prompt))
        self.rows_run += len(logits_jobs) + len(rows)
        if logits_jobs:
            results = engine.score_logits([prompt for _, prompt in logits_jobs])
            for (job, _), result in zip(logits_jobs, results, strict=True):
                job.resolve(result)
        return rows

    def _admit(self, free: int) -> list[DecodeRow]:
        """Between decoding steps: take waiting jobs without waiting; up to `free` new rows."""
        taken: list[_Job] = []
        decoding = 0
        while not self._stop_seen and decoding < free and len(taken) < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stop_seen = True  # finish what runs, then end the thread
                break
            if job.cancelled():
                continue
            taken.append(job)
            if not (isinstance(job, _ScoreJob) and job.mode == "logits"):
                decoding += 1
        if not taken:
            return []
        self._running.extend(taken)
        rows = self._prepare(taken)
        self.rows_joined += len(rows)
        return rows

    def _cancel_check(self, job: _Job) -> Callable[[], bool]:
        def cancelled() -> bool:
            if job.cancelled():
                self.rows_cancelled += 1
                return True
            return False

        return cancelled

    def _answer_row(self, job: _GenerateJob, prompt: list[int]) -> DecodeRow:
        assert job.request is not None
        return DecodeRow(
            prompt_ids=prompt,
            sampling=job.request.sampling,
            adapter=False,
            on_text=job.on_text,
            on_done=job.resolve,
            cancelled=self._cancel_check(job),
        )

    def _score_row(self, job: _ScoreJob, prompt: list[int]) -> DecodeRow:
        def done(generation: Generation) -> None:
            job.resolve(parse_reply(generation.text))

        return DecodeRow(
            prompt_ids=prompt,
            sampling=SamplingParams(max_tokens=MAX_REPLY_TOKENS, temperature=0.0),
            adapter=True,
            on_done=done,
            cancelled=self._cancel_check(job),
        )
