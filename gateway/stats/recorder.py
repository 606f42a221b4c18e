"""The stats recorder: each decision counted into the cell of its policy, tenant and minute.

`record` is on every request's path (cache hits included), so it only adds to a few counters of
one cell: no lock (one event loop), no I/O, no text. Minute cells older than an hour are folded
into one "since start" cell per policy and tenant. With a `SharedStats` (Redis), a background
task adds to Redis, every `flush_s`, what each cell counted since its last successful flush
(the request path only marks the cell as changed); the windows are then read from Redis (all
replicas), and from this process alone while Redis fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from gateway.policy.schema import Action
from gateway.stats.cells import ACTIONS, CONFIDENCE_BINS, Cell, Key, confidence_bin
from gateway.stats.prices import Price, Prices

if TYPE_CHECKING:
    from gateway.pipeline import Completion, CompletionInput
    from gateway.policy import PolicyStore

log = logging.getLogger(__name__)

Window = Literal["5m", "1h", "all"]
WINDOW_MINUTES: dict[str, int | None] = {"5m": 5, "1h": 60, "all": None}
KEPT_MINUTES = 61  # the longest window, plus the minute in progress
Minutes = dict[int, dict[Key, Cell]]

_ACTION_INDEX = {Action(name): index for index, name in enumerate(ACTIONS)}
_TOP_BIN = CONFIDENCE_BINS - 1


class SharedStats(Protocol):
    """Where replicas add up their counters (Redis); every call may raise `StatsUnavailable`."""

    @property
    def where(self) -> str: ...

    async def add(self, minutes: Minutes) -> None: ...

    async def read(self, minutes: list[int] | None) -> dict[Key, Cell]: ...

    async def close(self) -> None: ...


class StatsUnavailable(Exception):
    """The shared store failed or was skipped; the reason is the message."""


class Auditor(Protocol):
    def offer(self, inp: CompletionInput, completion: Completion) -> None: ...


@dataclass(frozen=True)
class View:
    """Cells for a window, and whose traffic they count."""

    cells: dict[Key, Cell]
    aggregated: bool
    reason: str | None = None  # why not aggregated, when the store failed


class StatsRecorder:
    """Counts decisions per (policy, tenant) by minute; `clock` is wall-clock seconds (replicas
    agree on minutes)."""

    def __init__(
        self,
        policies: PolicyStore,
        prices: Prices,
        *,
        shared: SharedStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policies = policies
        self._prices = prices
        self.shared = shared
        self._clock = clock
        self.started_at = clock()
        self._minutes: Minutes = {}
        self._archived: dict[Key, Cell] = {}
        self._changed: set[tuple[int, Key]] | None = set() if shared is not None else None
        """(minute, key) of the cells counted in since the last flush (with a shared store)."""
        self._flushed: dict[tuple[int, Key], dict[str, float]] = {}
        """What the shared store holds of each cell: its fields at its last successful flush."""
        self._minute = -1
        self._cells: dict[Key, Cell] = {}  # the current minute's
        self.auditor: Auditor | None = None
        self._priced_for: object = None  # the policy set `_prices_of` holds prices for
        self._prices_of: dict[str, Price | None] = {}

    # ------------------------------------------------------------------ recording

    def record(
        self,
        completion: Completion,
        stages: Mapping[str, float] | None,
        inp: CompletionInput,
    ) -> None:
        """Count one decision (`stages`: seconds per stage, None for a cache hit) served for `inp`
        (its tenant; the conversation, for the audit)."""
        key = (completion.policy, inp.tenant or "")
        price = self._price(completion.policy)
        self._add(self._cell(key), completion, stages, price)
        auditor = self.auditor
        if auditor is not None and not completion.cached and completion.action is Action.RETURN:
            auditor.offer(inp, completion)

    @staticmethod
    def _add(
        cell: Cell, completion: Completion, stages: Mapping[str, float] | None, price: Price | None
    ) -> None:
        cell.requests += 1
        cell.actions[_ACTION_INDEX[completion.action]] += 1
        index = int(completion.confidence * CONFIDENCE_BINS)  # confidence_bin, inlined
        cell.confidence[index if index < _TOP_BIN else _TOP_BIN] += 1
        if completion.cached:
            cell.hits += 1
        if stages:
            for stage, seconds in stages.items():
                cell.add_latency(stage, seconds)
        if completion.escalation_cost:
            cell.spend_usd += completion.escalation_cost
        elif (
            price is not None
            and completion.action is Action.ESCALATE
            and not completion.escalation_error
        ):  # LiteLLM knew no cost: the reply's tokens at the price of the baseline
            cell.spend_usd += price.of(
                completion.usage.prompt_tokens, completion.usage.completion_tokens
            )
        if price is not None:
            usage = completion.local_usage
            cell.baseline_usd += price.of(usage.prompt_tokens, usage.completion_tokens)
            cell.priced += 1

    def record_verdict(
        self, key: Key, confidence: float, correct: bool | None, cost_usd: float
    ) -> None:
        """One audited answer: `correct` None when the judge answered neither yes nor no."""
        for cell in self._cells_of(key):
            cell.sampled += 1
            cell.audit_usd += cost_usd
            if correct is None:
                cell.unclear += 1
                continue
            index = confidence_bin(confidence)
            cell.judged[index] += 1
            cell.judged_confidence[index] += confidence
            if correct:
                cell.correct[index] += 1

    def record_audit_miss(self, key: Key, *, failed: bool) -> None:
        """A sampled answer not judged: the judge failed (`failed`), or the audit was busy,
        over budget or stopped."""
        for cell in self._cells_of(key):
            cell.sampled += 1
            if failed:
                cell.failed += 1
            else:
                cell.skipped += 1

    def _cells_of(self, key: Key) -> list[Cell]:
        return [self._cell(key)]

    def _price(self, policy_name: str) -> Price | None:
        """The price of the policy's escalation model (looked up once per policy version)."""
        current = self._policies.current
        if current is not self._priced_for:
            self._priced_for = current
            self._prices_of = {}
        try:
            return self._prices_of[policy_name]
        except KeyError:
            policy = current.get(policy_name)
            target = policy.escalate_to if policy is not None else None
            price = self._prices.of(target) if target is not None else None
            self._prices_of[policy_name] = price
            return price

    def _cell(self, key: Key) -> Cell:
        minute = int(self._clock() // 60)
        if minute != self._minute:
            self._turn(minute)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = Cell()
        if self._changed is not None:
            self._changed.add((minute, key))
        return cell

    def _turn(self, minute: int) -> None:
        """A new minute: its cells, and the ones over an hour old folded into the archive."""
        self._minute = minute
        self._cells = self._minutes.setdefault(minute, {})
        for old in [m for m in self._minutes if m <= minute - KEPT_MINUTES]:
            for key, cell in self._minutes.pop(old).items():
                self._archived.setdefault(key, Cell()).merge(cell)
                self._flushed.pop((old, key), None)  # no window shows that minute any more

    # -------------------------------------------------------------------- reading

    def local(self, window: Window) -> dict[Key, Cell]:
        """This process's cells over `window`, merged per (policy, tenant)."""
        span = WINDOW_MINUTES[window]
        now = int(self._clock() // 60)
        out: dict[Key, Cell] = {}
        sources = [c for m, c in self._minutes.items() if span is None or m > now - span]
        if span is None:
            sources.append(self._archived)
        for cells in sources:
            for key, cell in cells.items():
                out.setdefault(key, Cell()).merge(cell)
        return out

    def view_local(self, window: Window) -> View:
        return View(self.local(window), aggregated=False)

    async def view(self, window: Window) -> View:
        """All replicas' cells (this one's unflushed counts added first), or this one's alone
        while the shared store fails."""
        if self.shared is None:
            return View(self.local(window), aggregated=False)
        span = WINDOW_MINUTES[window]
        now = int(self._clock() // 60)
        try:
            await self.flush()
            minutes = None if span is None else list(range(now - span + 1, now + 1))
            return View(await self.shared.read(minutes), aggregated=True)
        except StatsUnavailable as exc:
            return View(self.local(window), aggregated=False, reason=str(exc))

    # -------------------------------------------------------------------- sharing

    async def flush(self) -> None:
        """Add to the shared store what each changed cell counted since its last successful
        flush; after a failure the same cells are sent again, with all they counted since."""
        if self.shared is None or not self._changed:
            return
        changed, self._changed = self._changed, set()
        minutes: Minutes = {}
        sent: dict[tuple[int, Key], dict[str, float]] = {}
        for minute, key in changed:
            cell = self._minutes.get(minute, {}).get(key)
            if cell is None:
                continue  # over an hour old: no window shows it
            now = cell.fields()
            before = self._flushed.get((minute, key), {})
            delta = Cell()
            for name, value in now.items():
                if value != before.get(name, 0):
                    delta.add_field(name, value - before.get(name, 0))
            minutes.setdefault(minute, {})[key] = delta
            sent[(minute, key)] = now
        try:
            await self.shared.add(minutes)
        except StatsUnavailable:
            assert self._changed is not None
            self._changed |= changed
            raise
        self._flushed.update(sent)

    async def run_flusher(self, every_s: float, stop: asyncio.Event) -> None:
        """Flush every `every_s` until `stop`, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            try:
                await self.flush()
            except StatsUnavailable:
                continue  # the store logs its outage once; the counts wait for the next flush
