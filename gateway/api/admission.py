"""Admission of an API request: its key (401), the client address's failed logins (429), the
key's rate limit (429) and, once the body names it, the key's permission for the policy (403).

What is learnt on the way (the tenant, the key, the policy) goes into the request's
`RequestContext`, which the access log line and the pipeline read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import Scope

from gateway.api.keys import ApiKey
from gateway.api.state import GatewayState
from gateway.errors import AuthenticationFailed, RateLimited, TooManyFailedAuthentications

_CONTEXT = "gateway"  # the key of the request's context in the ASGI scope's `state`


@dataclass
class RequestContext:
    """What the gateway learns about one request as it handles it."""

    tenant: str | None = None
    """The API key's id (None without keys)."""
    api_key: ApiKey | None = None
    policy: str | None = None
    """The policy the body named, once the body is valid."""
    quiet_log: bool = False
    """Leave the request out of the access log (failed logins are logged in summary)."""


def request_context(scope: Scope) -> RequestContext:
    """The request's context, made on first use (each request asks a few times: the common
    case is one look-up)."""
    try:
        context: RequestContext = scope["state"][_CONTEXT]
    except KeyError:
        context = scope.setdefault("state", {})[_CONTEXT] = RequestContext()
    return context


async def authenticate_and_rate_limit(state: GatewayState, scope: Scope) -> RequestContext:
    """The API key (401 unless a configured one is presented, when any is configured), then the
    key's rate limit (429). The request's context, returned, gets the key and its id (the
    tenant)."""
    context = request_context(scope)
    if state.keys.enabled:
        presented = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        key = authenticate(state, scope, presented)
        context.tenant = key.id
        context.api_key = key
    limiter = state.rate_limiter
    if limiter is None:
        return context
    wait = await limiter.acquire(context.tenant or "anonymous")
    if wait > 0:
        raise RateLimited(
            f"rate limit reached: {state.settings.limits.requests_per_minute} requests per minute "
            f"for this API key; retry in {wait:.1f} s",
            retry_after=math.ceil(wait),
        )
    return context


def authenticate(state: GatewayState, scope: Scope, presented: Sequence[str]) -> ApiKey:
    """The presented key, unless the client's address is throttled for its failures (429,
    `gateway.api.throttle`) or the key is wrong (401, counted). Either is left out of the access
    log (`quiet_log`): the throttle logs failures in summary."""
    logins = state.failed_logins
    client = scope.get("client")
    address = str(client[0]) if client else "unknown"
    wait = logins.wait(address)
    if wait > 0:
        request_context(scope).quiet_log = True
        raise TooManyFailedAuthentications(
            f"too many failed authentications from this address; retry in {math.ceil(wait)} s",
            retry_after=math.ceil(wait),
        )
    try:
        return state.keys.authenticate(presented)
    except AuthenticationFailed as exc:
        request_context(scope).quiet_log = True
        logins.failed(address, exc.message)
        raise


def allowed_policies(scope: Scope) -> frozenset[str] | None:
    """The policies the request's API key may use; None for all (or when keys are off)."""
    key = request_context(scope).api_key
    return None if key is None else key.policies


def authorize_policy(context: RequestContext, policy: str) -> None:
    """403 unless the request's API key (as admission found it) may use `policy`."""
    key = context.api_key
    if key is not None:
        key.authorize_policy(policy)
