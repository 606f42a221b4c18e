"""`GET /dashboard` and `GET /v1/gateway/stats`: what the gateway decides and what it saves.

Access: with admin keys configured (`auth.admin_keys`), a request must present one, as
`Authorization: Bearer KEY` or as the password of HTTP Basic (what a browser asks for; the user
name is ignored). With API keys but no admin key, nobody may (403 says what to configure). With
no key at all (the demo), only loopback clients may.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from importlib import resources
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from gateway.api.dependencies import State
from gateway.api.errors import error_responses
from gateway.api.state import GatewayState
from gateway.errors import AuthenticationFailed, ClientError, PermissionDenied
from gateway.stats.recorder import StatsRecorder, Window
from gateway.stats.summary import summarize

router = APIRouter(tags=["dashboard"])

REALM = 'Basic realm="certainty-gateway dashboard", charset="UTF-8"'
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
"""Nothing the page loads may come from elsewhere; its one script and style are inline."""

WindowQuery = Annotated[
    Literal["5m", "1h", "all"],
    Query(description="The last 5 minutes, the last hour, or since the counters began."),
]
TenantQuery = Annotated[
    str | None,
    Query(max_length=64, description="One tenant (an API key id); every tenant when absent."),
]


class PolicyStats(BaseModel):
    policy: str
    thresholds: dict[str, float | None] = Field(description="`return_at`, `escalate_at`.")
    requests: int
    actions: dict[str, int] = Field(description="Decisions by action: return, withhold, escalate.")
    shares: dict[str, float | None]
    confidence_histogram: dict[str, list[float]] = Field(
        description="`edges` (11 bin edges on confidence) and `counts` (10 bins)."
    )
    cache: dict[str, int | float | None] = Field(description="`hits`, `hit_rate`.")
    latency_ms: dict[str, dict[str, float | None]] = Field(
        description="Per stage (generate, score, escalate): `count`, `p50`, `p95` in ms "
        "(read from log-spaced bins, to within 25 %)."
    )
    escalation: dict[str, Any] = Field(
        description="`spend_usd` (LiteLLM's cost of the escalations; where it knows none, "
        "the reply's token counts at the baseline's price), `baseline_usd` (every "
        "request's local token counts priced at the escalation model), `saving_usd` "
        "(baseline - spend), `priced_at`; null where the model has no known price."
    )
    calibration: dict[str, Any] = Field(
        description="The audit's verdicts: `judged`, `correct`, `accuracy`, `ece`, reliability "
        "`bins` (judged, correct, mean confidence per tenth of confidence), `audit_usd`."
    )


class StatsDocument(BaseModel):
    object: Literal["gateway.stats"]
    window: str
    window_s: int | None
    generated_at: float
    started_at: float
    aggregated: bool = Field(description="True when the counts are every replica's (Redis).")
    scope: str
    scope_reason: str | None
    tenant: str | None
    tenants: list[str]
    policies: list[PolicyStats]


@router.get(
    "/v1/gateway/stats", response_model=StatsDocument, responses=error_responses(400, 401, 403)
)
async def gateway_stats(
    request: Request, state: State, window: WindowQuery = "5m", tenant: TenantQuery = None
) -> dict[str, Any]:
    """Decisions, confidences, cache, latency per stage, escalation spend and estimated saving,
    and live calibration from the audit, per policy. Needs an admin key (see /dashboard)."""
    check_admin(request, state)
    return await _document(state, window, tenant)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(
    request: Request, state: State, window: WindowQuery = "5m", tenant: TenantQuery = None
) -> HTMLResponse:
    try:
        check_admin(request, state)
    except ClientError as exc:
        headers = {"WWW-Authenticate": REALM} if exc.status_code == 401 else {}
        return HTMLResponse(_page_error(exc.message), exc.status_code, headers=headers)
    document = await _document(state, window, tenant)
    page = _template().replace("/*INITIAL*/null", _script_json(document))
    return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


async def _document(state: GatewayState, window: Window, tenant: str | None) -> dict[str, Any]:
    stats: StatsRecorder | None = state.stats
    if stats is None:
        raise PermissionDenied("the stats are turned off (stats.enabled)")
    view = await stats.view(window)
    return summarize(
        view,
        state.policies.current.policies,
        window=window,
        tenant=tenant,
        started_at=stats.started_at,
    )


def check_admin(request: Request, state: GatewayState) -> None:
    """Raise unless the caller may see the stats (see the module docstring)."""
    admin_keys = state.settings.auth.admin_keys
    if admin_keys:
        token = _presented_key(request.headers.get("authorization"))
        if token is None:
            raise AuthenticationFailed("an admin key is required (auth.admin_keys)")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for key in admin_keys:  # every digest compared: the time does not show which matched
            found |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
        if not found:
            raise AuthenticationFailed("invalid admin key")
        return
    if state.keys.enabled:
        raise PermissionDenied(
            "the stats need an admin key, and none is configured (auth.admin_keys)"
        )
    if not _loopback(request.client.host if request.client else None):
        raise PermissionDenied(
            "without API keys, the stats are served to loopback clients only; configure "
            "auth.admin_keys to reach them from elsewhere"
        )


def _presented_key(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _template() -> str:
    return resources.files("gateway.api").joinpath("dashboard.html").read_text(encoding="utf-8")


def _script_json(document: dict[str, Any]) -> str:
    """JSON that is safe inside a <script> element."""
    text = orjson.dumps(document).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page_error(message: str) -> str:
    safe = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        "<!doctype html><meta charset=utf-8><title>certainty-gateway dashboard</title>"
        f"<p>{safe}</p>"
    )
