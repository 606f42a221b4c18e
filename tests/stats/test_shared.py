"""Counters shared through a real Redis: replicas add up; with Redis gone, each shows its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config import CacheSettings, Settings, StatsSettings
from gateway.policy import Action, PolicyStore
from gateway.stats.prices import Prices
from gateway.stats.recorder import StatsRecorder
from gateway.stats.shared import RedisStats
from tests.servers import RedisServer
from tests.stats.test_recorder import GUARD, completion


@pytest.fixture
def store(tmp_path: Path) -> PolicyStore:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "guard.yaml").write_text("name: guard\nreturn_at: 0.5\n")
    return PolicyStore.open(folder, set())


def replica(store: PolicyStore, redis_server: RedisServer) -> StatsRecorder:
    settings = Settings(
        cache=CacheSettings(url=redis_server.url, timeout_s=0.5),
        stats=StatsSettings(flush_s=0.1),
    )
    return StatsRecorder(store, Prices([]), shared=RedisStats.from_settings(settings))


def test_replicas_see_the_sum_of_their_traffic_and_their_own_without_redis(
    store: PolicyStore, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        one, two = replica(store, redis_server), replica(store, redis_server)
        for _ in range(3):
            one.record(completion("guard", Action.RETURN, 0.9), {"generate": 0.05}, GUARD)
        for _ in range(2):
            two.record(completion("guard", Action.WITHHOLD, 0.2), {"generate": 0.05}, GUARD)
        await two.flush()
        for window in ("5m", "1h", "all"):
            view = await one.view(window)  # type: ignore[arg-type]
            assert view.aggregated
            cell = view.cells[("guard", "")]
            assert cell.requests == 5
            assert cell.actions == [3, 2, 0]
            assert sum(cell.latency["generate"]) == 5
        redis_server.kill()
        one.record(completion("guard", Action.RETURN, 0.9), None, GUARD)
        alone = await one.view("5m")
        assert not alone.aggregated
        assert alone.reason is not None
        assert alone.cells[("guard", "")].requests == 4  # its own only
        assert (await two.view("5m")).cells[("guard", "")].requests == 2
        for recorder in (one, two):
            assert recorder.shared is not None
            await recorder.shared.close()

    asyncio.run(scenario())


def test_a_failed_flush_keeps_the_counts_for_the_next(
    store: PolicyStore, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        one = replica(store, redis_server)
        redis_server.kill()
        one.record(completion("guard", Action.RETURN, 0.9), None, GUARD)
        assert not (await one.view("5m")).aggregated  # the flush was refused
        redis_server.start()
        # the breaker has seen one failure only: the next flush goes through
        view = await one.view("5m")
        assert view.aggregated
        assert view.cells[("guard", "")].requests == 1
        assert one.shared is not None
        await one.shared.close()

    asyncio.run(scenario())


def test_each_count_reaches_redis_once_across_flushes(
    store: PolicyStore, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        one = replica(store, redis_server)
        for flushes in range(3):  # counts before each flush, and the same cell again after
            for _ in range(2):
                one.record(completion("guard", Action.RETURN, 0.9), {"generate": 0.05}, GUARD)
            await one.flush()
            await one.flush()  # nothing new: adds nothing
            cell = (await one.view("5m")).cells[("guard", "")]
            assert cell.requests == 2 * (flushes + 1)
            assert sum(cell.latency["generate"]) == 2 * (flushes + 1)
        assert one.shared is not None
        await one.shared.close()

    asyncio.run(scenario())
