"""The gateway's life as a process: draining on SIGTERM, reloading on SIGHUP, stopping tasks.

Signals reach the main thread only; under a test client (which runs the app in another thread)
these handlers are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from fastapi import FastAPI

from gateway.api.keys import reload_keys
from gateway.api.state import GatewayState
from gateway.config import Settings

log = logging.getLogger(__name__)


def drain_on_sigterm(app: FastAPI, state: GatewayState, drain_s: float) -> None:
    """SIGTERM: readiness fails at once; in-flight requests get `drain_s` to finish (new ones are
    still served meanwhile); then the server is asked to stop: `app.state.stop_serving()` when
    the `serve` command set it, else the server's own SIGTERM handler. A second SIGTERM stops at
    once."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (TestClient runs the app in another)
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    draining: set[asyncio.Task[None]] = set()

    def stop() -> None:
        stop_serving: Callable[[], None] | None = getattr(app.state, "stop_serving", None)
        if stop_serving is not None:
            stop_serving()
        elif callable(previous):
            previous(signal.SIGTERM, None)
        else:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)

    def on_sigterm() -> None:
        if state.draining:
            stop()
            return
        state.begin_drain()
        log.warning(
            "SIGTERM: not ready any more, draining in-flight requests",
            extra={"inflight": state.inflight, "drain_s": drain_s},
        )
        task = loop.create_task(_drain(state, drain_s, stop))
        draining.add(task)
        task.add_done_callback(draining.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)


async def _drain(state: GatewayState, drain_s: float, stop: Callable[[], None]) -> None:
    if await state.wait_idle(drain_s):
        log.info("drained: no request in flight; stopping")
    else:
        log.warning(
            "drain time is over; stopping with requests in flight",
            extra={"inflight": state.inflight, "drain_s": drain_s},
        )
    stop()


def reload_on_sighup(state: GatewayState, settings: Settings) -> None:
    """SIGHUP re-reads the policies and the API key file."""

    def reload() -> None:
        state.policies.reload()
        state.keys = reload_keys(state.keys, settings.auth)

    # Fails off the main thread (TestClient runs the app in a thread) or without SIGHUP.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
