"""A circuit breaker: stop calling a failing dependency for a while, then probe it once.

closed     calls go through; `failure_threshold` consecutive failures open the circuit.
open       calls are refused (the caller treats that as a miss) until `cooldown_s` has passed.
half-open  exactly one call goes through as a probe: success closes, failure opens again.

Each state change logs exactly one line, never one per call: the outage (warning) and the
recovery (info) at a level operators see, the probes in between at debug level.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]

logger = logging.getLogger("gateway.cache")


class CircuitBreaker:
    """Tracks one dependency named `name` in log lines; `clock` is monotonic seconds."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.last_failure = ""

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the dependency now; a True in half-open state is the probe."""
        if self._state == "closed":
            return True
        if self._state == "open":
            if self._clock() - self._opened_at < self._cooldown_s:
                return False
            self._change("half-open", logging.DEBUG, "cool-down over, probing")
        if self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        if self._state == "half-open":
            self._probing = False
            self._failures = 0
            self._change("closed", logging.INFO, "reachable again, resuming")
        elif self._state == "closed":
            self._failures = 0
        # open: a late answer to a call made before the circuit opened proves nothing.

    def record_failure(self, reason: str) -> None:
        self.last_failure = reason
        if self._state == "half-open":
            self._probing = False
            self._open(logging.DEBUG, f"still unavailable ({reason})")
        elif self._state == "closed":
            self._failures += 1
            if self._failures >= self._threshold:
                self._open(
                    logging.WARNING,
                    f"unavailable after {self._failures} failures in a row ({reason}); "
                    f"not trying for {self._cooldown_s:g} s",
                )

    def abandon(self) -> None:
        """The call allowed by `allow` was cancelled before it had a result: free the probe."""
        if self._state == "half-open":
            self._probing = False

    def _open(self, level: int, message: str) -> None:
        self._opened_at = self._clock()
        self._change("open", level, message)

    def _change(self, state: State, level: int, message: str) -> None:
        self._state = state
        logger.log(level, "%s: %s (circuit %s)", self.name, message, state)
