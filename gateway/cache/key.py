"""Cache keys: a sha256 over everything that can change a decision, and the cacheability rule."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

# Bump when the key's content changes, so entries written by an older gateway are never read.
KEY_VERSION = 2


def cache_key(
    *,
    policy_name: str,
    policy_hash: str,
    model_id: str,
    scoring_mode: str,
    messages: list[dict[str, Any]],
    documents: list[dict[str, Any]],
    params: dict[str, Any],
    tenant: str | None,
) -> str:
    """`{policy_name}:{sha256 hex}` over the canonical JSON of every input of a decision.

    `model_id` names the base model *and* adapter with their revisions. The only normalization is
    the one that cannot change meaning: JSON key order and separators, and parameters set to
    null (OpenAI treats an explicit null as absent). Message and document text is hashed as sent,
    whitespace included. Inputs must be plain JSON values; anything else raises `TypeError`.
    The JSON is orjson's (sorted keys, compact); content beyond it (an integer over 64 bits)
    falls back to the standard library's, under a prefix of its own.
    """
    content = {
        "v": KEY_VERSION,
        "policy": policy_name,
        "policy_hash": policy_hash,
        "model": model_id,
        "scoring_mode": scoring_mode,
        "messages": messages,
        "documents": documents,
        "params": {name: value for name, value in params.items() if value is not None},
        "tenant": tenant,
    }
    try:
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # beyond orjson (an integer over 64 bits in a document): the stdlib's
        canonical = b"json:" + json.dumps(content, sort_keys=True).encode()  # (kept apart)
    digest = hashlib.sha256(canonical).hexdigest()
    return f"{policy_name}:{digest}"


def policy_of(key: str) -> str:
    """The policy name a key was made for (names may contain ':'; the digest never does)."""
    return key.rpartition(":")[0]


def is_cacheable(temperature: float | None, seed: int | None, policy_opts_in: bool) -> bool:
    """Deterministic requests (temperature 0, or an explicit seed) are cached; sampled ones only
    when the policy opts in. An absent temperature means OpenAI's default of 1: sampled."""
    return policy_opts_in or temperature == 0 or seed is not None
