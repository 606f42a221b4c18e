"""The OpenAPI document: what the server does, the chat route (served outside FastAPI) included.

FastAPI documents what it serves, with two things this server does not do: a 422 for an invalid
body (the gateway answers 400, in the OpenAI envelope) and, on the `/v1` routes, a bearer scheme
even when no API key is configured (then nothing is asked for). Both are corrected here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.api.chat import documented_route
from gateway.config import AuthSettings


def openapi_document(app: FastAPI, auth: AuthSettings) -> dict[str, Any]:
    keys = bool(auth.api_keys or auth.api_keys_file)
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=[*app.routes, documented_route(keys=keys)],
    )
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            if not keys:
                operation.pop("security", None)
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    if not keys:
        document.get("components", {}).pop("securitySchemes", None)
    return document
