"""API keys: who may call `/v1`, under which id, and which policies each key may use.

Keys come from `auth.api_keys` (or `GATEWAY_AUTH__API_KEYS`, comma-separated) and from the file
`auth.api_keys_file` (or `GATEWAY_AUTH__API_KEYS_FILE`). The file holds one key per line, with
up to two more columns separated by spaces or tabs (the policy list, last, is comma-separated);
`#` at the start of a line or after a space starts a comment:

    # KEY                       ID        POLICIES (comma-separated; `*` or nothing: all)
    sk-live-2f9c0d8e4b7a6c51    support   guard,granite
    sk-live-7d1e3b5a9c2f4e60    batch

The id names the key wherever the gateway needs a name: the tenant part of cache keys, rate
limits, metrics and log lines. A key without one (every key given in the settings) is named
`key-` + the first 8 hex digits of its sha256. The key itself is kept only as its sha256 digest.

Clients send `Authorization: Bearer KEY`. The presented key's digest is compared with every
configured digest by `hmac.compare_digest`, so neither the match nor its position shows in the
time taken. A key may only request the policies in its list (403 otherwise). With no key
configured, `/v1` is open; `serve` then refuses a non-loopback address unless told
`--insecure-no-auth`. `/health/*` and `/metrics` are always open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import AuthSettings
from gateway.errors import AuthenticationFailed, ConfigError, PermissionDenied
from gateway.logs import mask_also

log = logging.getLogger(__name__)

_KEY = re.compile(r"[\x21-\x7e]{1,512}")  # visible ASCII: what fits in a header unquoted
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_FILE_KEY = "auth.api_keys_file (or GATEWAY_AUTH__API_KEYS_FILE)"
_SETTINGS_KEY = "auth.api_keys (or GATEWAY_AUTH__API_KEYS)"


def key_id(key: str) -> str:
    """The default id of a key: `key-` + the first 8 hex digits of its sha256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class ApiKey:
    """One configured key, by its digest; `policies` None means every policy."""

    id: str
    digest: bytes = field(repr=False)
    policies: frozenset[str] | None = None

    def authorize_policy(self, policy: str) -> None:
        if self.policies is not None and policy not in self.policies:
            raise PermissionDenied(
                f"this API key ({self.id}) may not use the model {policy!r}",
                param="model",
                code="model_not_allowed",
            )


@dataclass(frozen=True)
class KeyEntry:
    """A key as read from the settings or the file, before it is reduced to a digest."""

    key: str = field(repr=False)
    id: str
    policies: frozenset[str] | None
    where: str


class KeyRing:
    """The configured keys; empty means authentication is off."""

    def __init__(self, keys: Sequence[ApiKey] = ()) -> None:
        self._keys = tuple(keys)

    @classmethod
    def from_entries(cls, entries: Iterable[KeyEntry]) -> KeyRing:
        """The ring of `entries`; a key or an id given twice is a `ConfigError` (keys unnamed)."""
        by_digest: dict[bytes, KeyEntry] = {}
        by_id: dict[str, KeyEntry] = {}
        keys = []
        for entry in entries:
            digest = hashlib.sha256(entry.key.encode()).digest()
            if digest in by_digest:
                first = by_digest[digest]
                raise ConfigError(
                    f"{entry.where}: the same API key is also given at {first.where} "
                    f"(ids {first.id!r} and {entry.id!r})"
                )
            if entry.id in by_id:
                other = by_id[entry.id].where
                raise ConfigError(f"{entry.where}: the key id {entry.id!r} is also used at {other}")
            by_digest[digest] = by_id[entry.id] = entry
            keys.append(ApiKey(id=entry.id, digest=digest, policies=entry.policies))
        return cls(keys)

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> KeyRing:
        return cls.from_entries(read_keys(auth))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def ids(self) -> list[str]:
        return [key.id for key in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def authenticate(self, authorization: Sequence[str]) -> ApiKey:
        """The key presented in the `Authorization` header values, or `AuthenticationFailed`."""
        token = _bearer_token(authorization)
        digest = hashlib.sha256(token.encode("latin-1")).digest()
        found: ApiKey | None = None
        for key in self._keys:  # every digest is compared: the time does not depend on the match
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise AuthenticationFailed("invalid API key")
        return found


def _bearer_token(authorization: Sequence[str]) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "no API key: send it in the header 'Authorization: Bearer <key>'"
        )
    if len(authorization) > 1:
        raise AuthenticationFailed("more than one Authorization header")
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthenticationFailed("the Authorization header must be 'Bearer <key>'")
    return token


def read_keys(auth: AuthSettings) -> list[KeyEntry]:
    """Every configured key: the settings' list, then the file's lines; `ConfigError` if bad."""
    entries = []
    for index, key in enumerate(auth.api_keys):
        where = f"{_SETTINGS_KEY}[{index}]"
        _check_key(key, where)
        entries.append(KeyEntry(key=key, id=key_id(key), policies=None, where=where))
    if auth.api_keys_file is not None:
        entries.extend(read_key_file(auth.api_keys_file))
    return entries


def read_key_file(path: Path) -> list[KeyEntry]:
    """The keys of a key file (see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{_FILE_KEY}: cannot read {path}: {reason}") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        columns = _strip_comment(raw).split(maxsplit=2)
        if not columns:
            continue
        where = f"{path}:{number}"
        key = columns[0]
        _check_key(key, where)
        ident = columns[1] if len(columns) > 1 else key_id(key)
        if not _ID.fullmatch(ident):
            raise ConfigError(
                f"{_FILE_KEY}: {where}: the id {ident!r} must be 1-64 letters, digits or ._:@- "
                "(starting with a letter or digit)"
            )
        policies = _policies(columns[2], where) if len(columns) > 2 else None
        entries.append(KeyEntry(key=key, id=ident, policies=policies, where=where))
    return entries


def _strip_comment(line: str) -> str:
    stripped = line.strip()
    if stripped.startswith("#"):
        return ""
    match = re.search(r"\s#", stripped)
    return stripped[: match.start()] if match else stripped


def _policies(column: str, where: str) -> frozenset[str] | None:
    names = [name.strip() for name in column.split(",") if name.strip()]
    if any(len(name.split()) > 1 for name in names):
        raise ConfigError(
            f"{_FILE_KEY}: {where}: expected 'KEY [ID [POLICY,POLICY,...]]' (policy names are "
            "comma-separated)"
        )
    if "*" in names:
        return None
    if not names:
        raise ConfigError(f"{_FILE_KEY}: {where}: the policy list is empty")
    return frozenset(names)


def _check_key(key: str, where: str) -> None:
    # The message never quotes the key: it would end up in logs and terminals.
    if not _KEY.fullmatch(key):
        raise ConfigError(
            f"{where}: an API key must be 1-512 visible ASCII characters, without spaces"
        )


def reload_keys(current: KeyRing, auth: AuthSettings) -> KeyRing:
    """The keys as configured now (the key file re-read), or `current` when the new set is bad
    (logged, like a bad policy edit) or empty while keys are in use: a reload never opens the
    API to anyone; running without keys takes a restart."""
    try:
        entries = read_keys(auth)
        ring = KeyRing.from_entries(entries)
    except ConfigError as exc:
        log.error("API key reload rejected, keeping the current keys: %s", exc.message)
        return current
    if current.enabled and not ring.enabled:
        log.error(
            "API key reload rejected, keeping the current keys: no key is left, which would "
            "open /v1 to anyone (restart to run without keys)"
        )
        return current
    mask_also(entry.key for entry in entries)  # new keys are never logged either
    log.info("API keys reloaded", extra={"keys": len(ring), "key_ids": ring.ids})
    return ring
