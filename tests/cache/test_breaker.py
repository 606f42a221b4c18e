from __future__ import annotations

import logging

import pytest

from gateway.cache.breaker import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("redis test", failure_threshold=3, cooldown_s=10, clock=clock)


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = _breaker(FakeClock())
    states = []
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure("refused")
        states.append(breaker.state)
    assert states == ["closed", "closed", "open"]
    assert not breaker.allow()


def test_success_resets_the_failure_count() -> None:
    breaker = _breaker(FakeClock())
    breaker.record_failure("refused")
    breaker.record_failure("refused")
    breaker.record_success()
    breaker.record_failure("refused")
    breaker.record_failure("refused")
    assert breaker.state == "closed"


def test_half_open_after_cooldown_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now = 9.9
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    assert breaker.state == "half-open"
    assert not breaker.allow()
    assert not breaker.allow()


def test_successful_probe_closes() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now = 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.allow()


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now = 10
    assert breaker.allow()
    breaker.record_failure("timeout")
    assert breaker.state == "open"
    assert breaker.last_failure == "timeout"
    clock.now = 19.9
    assert not breaker.allow()
    clock.now = 20
    assert breaker.allow()


def test_abandoned_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now = 10
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()


def test_late_success_while_open_does_not_close() -> None:
    breaker = _breaker(FakeClock())
    for _ in range(3):
        breaker.record_failure("refused")
    breaker.record_success()
    assert breaker.state == "open"


def test_logs_one_line_per_state_change_not_per_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.cache")
    clock = FakeClock()
    breaker = _breaker(clock)
    for _ in range(50):  # many failing calls: one "open" line
        if breaker.allow():
            breaker.record_failure("refused")
    clock.now = 10
    assert breaker.allow()  # -> half-open
    breaker.record_success()  # -> closed
    for _ in range(50):
        assert breaker.allow()
        breaker.record_success()
    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert len(levels) == 3
    assert levels[0][0] == logging.WARNING
    assert "unavailable after 3 failures" in levels[0][1]
    assert levels[1][0] == logging.DEBUG
    assert levels[2][0] == logging.INFO
    assert "resuming" in levels[2][1]
