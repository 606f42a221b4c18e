"""Failed authentications, per client address: throttled, and logged in summary.

A client that keeps presenting wrong API keys gets, after `auth.failures_per_minute` failures
within a minute, 429 (`Retry-After`) to every `/v1` request until that minute is over, before
any key is looked at: guessing keys costs a minute per handful of guesses, and a right key found
meanwhile gets no answer. The address is the connection's peer (uvicorn puts a trusted proxy's
`X-Forwarded-For` there): behind a proxy that is not trusted, every client shares one address.

A 401 writes no access log line of its own (a flood would write thousands a second); each
address gets one warning per `auth.failure_log_interval_s` that counts its failures and
refusals since the last one.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_ADDRESSES = 10_000
"""Addresses remembered at most (least recently failing forgotten first): bounded memory."""


@dataclass
class _Record:
    window_start: float
    failures: int = 0  # in the current window
    logged_at: float = -math.inf
    unlogged_failures: int = 0
    unlogged_refusals: int = 0


class FailedLogins:
    def __init__(
        self,
        per_minute: int,
        log_interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.per_minute = per_minute
        self.log_interval_s = log_interval_s
        self.clock = clock
        self.max_addresses = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def wait(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        record = self._records.get(address)
        if record is None:
            return 0.0
        now = self.clock()
        left = record.window_start + WINDOW_S - now
        if left <= 0 or record.failures < self.per_minute:
            return 0.0
        record.unlogged_refusals += 1
        self._maybe_log(address, record, now)
        return left

    def failed(self, address: str, reason: str) -> None:
        """One failed authentication from `address`."""
        now = self.clock()
        record = self._records.get(address)
        if record is None:
            record = self._records[address] = _Record(window_start=now)
            if len(self._records) > self.max_addresses:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(address)
        if now - record.window_start >= WINDOW_S:
            record.window_start, record.failures = now, 0
        record.failures += 1
        record.unlogged_failures += 1
        self._maybe_log(address, record, now, reason)

    def _maybe_log(self, address: str, record: _Record, now: float, reason: str = "") -> None:
        if now - record.logged_at < self.log_interval_s:
            return
        log.warning(
            "authentication failed",
            extra={
                "client": address,
                "failures": record.unlogged_failures,
                "refused": record.unlogged_refusals,
                "reason": reason or None,
                "interval_s": self.log_interval_s,
            },
        )
        record.logged_at = now
        record.unlogged_failures = record.unlogged_refusals = 0
