"""Settings: one YAML file, every key overridable by a `GATEWAY_` environment variable.

Nested keys are joined by `__`: `GATEWAY_CACHE__URL=redis://...` sets `cache.url`. Environment
variables win over the file. Loaded once at start-up; a bad value stops start-up with one message
that names the key and where it came from.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from gateway.errors import ConfigError

DEFAULT_BASE = "ibm-granite/granite-4.0-micro"
DEFAULT_ADAPTER = "ibm-granite/granitelib-core-r1.0"
DEFAULT_ADAPTER_SUBFOLDER = "uncertainty/granite-4.0-micro/lora"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def is_local_path(name: str) -> bool:
    """A folder (existing or meant as one), not a hub id like `org/name`."""
    return os.path.exists(name) or name.startswith((os.sep, ".", "~")) or name.count("/") > 1


class ModelSettings(_Section):
    """The local model: hub ids or local folders."""

    # What `served_by` reports for a local answer; default: the hub id, or the folder's name.
    name: str | None = Field(default=None, min_length=1)
    base: str = DEFAULT_BASE
    base_revision: str | None = None
    adapter: str = DEFAULT_ADAPTER
    adapter_subfolder: str | None = DEFAULT_ADAPTER_SUBFOLDER
    adapter_revision: str | None = None
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    scoring_mode: Literal["logits", "generate"] = "logits"
    max_context: int | None = Field(default=None, gt=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:"):
            return value
        raise ValueError("device is one of auto, cpu, cuda, cuda:N, mps")

    @property
    def display_name(self) -> str:
        """`name`, else the base model's hub id, else its folder's name."""
        if self.name:
            return self.name
        if is_local_path(self.base):
            return Path(self.base.rstrip("/\\")).name or self.base
        return self.base


class EngineSettings(_Section):
    """How requests reach the model."""

    kind: Literal["local", "vllm"] = "local"
    max_batch_size: int = Field(default=8, ge=1)
    # On a CUDA device: a preallocated KV cache of max_batch_size rows of max_context tokens
    # (which also bounds a request's context), every decoding step replayed from a CUDA graph.
    # false: the model's own eager forward (the CPU path).
    cuda_graphs: bool = True
    max_context: int = Field(default=4096, ge=16)
    batch_wait_ms: float = Field(default=5.0, ge=0)
    queue_size: int = Field(default=64, ge=1)
    vllm_base_url: str | None = None
    vllm_base_model: str | None = None
    vllm_adapter_model: str = "uncertainty"
    vllm_timeout_s: float = Field(default=60.0, gt=0)
    vllm_api_key: str | None = None  # vLLM's --api-key, sent as a bearer token; never logged


class CacheSettings(_Section):
    """The decision cache; with `url`, also the Redis that the rate limiter shares."""

    url: str | None = None
    ttl_s: int = Field(default=3600, gt=0)
    max_entries: int = Field(default=10_000, gt=0)
    timeout_s: float = Field(default=0.05, gt=0)
    key_prefix: str = "certainty-gateway:"
    # Redis is single-threaded: a larger pool only makes cold bursts slower.
    max_connections: int = Field(default=16, ge=1)
    rate_limit_max_connections: int = Field(default=8, ge=1)
    # After this many failed Redis calls in a row, Redis is left alone for the cool-down.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=5.0, gt=0)


class EscalationSettings(_Section):
    """The larger models, in LiteLLM's own `model_list` format (paste an existing config)."""

    model_list: list[dict[str, Any]] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)
    num_retries: int = Field(default=1, ge=0)
    fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks_name_known_models(
        cls, fallbacks: list[dict[str, list[str]]], info: ValidationInfo
    ) -> list[dict[str, list[str]]]:
        model_list = info.data.get("model_list") or []
        known = sorted({str(model.get("model_name")) for model in model_list})
        for index, entry in enumerate(fallbacks):
            for source, targets in entry.items():
                for name in (source, *targets):
                    if name not in known:
                        raise ValueError(
                            f"fallbacks[{index}] names {name!r}, which is not a model_name of "
                            f"escalation.model_list (known: {', '.join(known) or 'none'})"
                        )
        return fallbacks


def _comma_list(value: Any) -> Any:
    """A list given as one comma-separated string (as the environment gives it), split."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class AuthSettings(_Section):
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    # Keys for /dashboard and /v1/gateway/stats (comma-separated in the environment).
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Per client address: after this many failed authentications in a minute, every request
    # from it gets 429 until the minute is over; the 401s of one address are logged once per
    # `failure_log_interval_s`, with their count.
    failures_per_minute: int = Field(default=30, gt=0)
    failure_log_interval_s: float = Field(default=60.0, gt=0)

    _comma_separated = field_validator("api_keys", "admin_keys", mode="before")(_comma_list)


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    max_messages: int = Field(default=256, gt=0)
    max_tokens_cap: int = Field(default=2048, gt=0)
    default_max_tokens: int = Field(default=256, gt=0)
    # Per API key id (all keyless callers share one allowance); unset: no limit.
    requests_per_minute: int | None = Field(default=None, gt=0)
    # Requests a key may send at once before the per-minute pace applies; unset: a minute's worth.
    rate_limit_burst: int | None = Field(default=None, gt=0)
    max_documents: int = Field(default=64, gt=0)
    max_document_bytes: int = Field(default=64 * 1024, gt=0)  # each document, as UTF-8 JSON
    max_stop_chars: int = Field(default=256, gt=0)  # each of at most 4 stop sequences


class StatsSettings(_Section):
    """The dashboard's counters (`/v1/gateway/stats`) and the calibration audit."""

    enabled: bool = True
    # With a Redis cache.url, replicas add their counters there this often (seconds).
    flush_s: float = Field(default=2.0, gt=0)
    # The shared "since start" counters expire this long after the last write.
    redis_ttl_s: int = Field(default=7 * 24 * 3600, gt=3600)
    audit_concurrency: int = Field(default=4, ge=1)
    audit_timeout_s: float = Field(default=30.0, gt=0)
    # After a judge failure, a policy's audit stops for this long.
    audit_pause_s: float = Field(default=300.0, gt=0)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # After SIGTERM: readiness fails at once; in-flight requests get this long to finish.
    drain_s: float = Field(default=30.0, ge=0)
    log_format: Literal["json", "text"] = "json"
    # One log line per request; false leaves them at debug level (the request metrics remain).
    access_log: bool = True
    # uvicorn's HTTP parser and event loop; "auto" takes httptools and uvloop (installed with
    # the gateway), the fastest; "h11" / "asyncio" are the pure-Python ones.
    http: Literal["auto", "httptools", "h11"] = "auto"
    loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # The connection edge (`gateway.api.server`): a request head's size and time to arrive, its
    # body's time to arrive, open connections, idle keep-alive.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=1000, gt=0)
    keep_alive_s: int = Field(default=5, gt=0)
    # Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` name the client (a load balancer's
    # address or network, or "*" alone for any; comma-separated in the environment): the client
    # address is what failed logins are counted by. Requests from any other peer are taken as
    # they come. (uvicorn's own FORWARDED_ALLOW_IPS is not read: this is its setting.)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"]
    )
    # /docs, /redoc and /openapi.json
    docs: bool = True

    _proxy_list = field_validator("trusted_proxies", mode="before")(_comma_list)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, proxies: list[str]) -> list[str]:
        if "*" in proxies and len(proxies) > 1:
            raise ValueError("'*' (any peer) stands alone, without addresses or networks")
        for proxy in proxies:
            if proxy == "*":
                continue
            try:  # strictly, as uvicorn reads it: a network with host bits would match nothing
                ipaddress.ip_network(proxy)
            except ValueError:
                raise ValueError(
                    f"{proxy!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, *)"
                ) from None
        return proxies


class Settings(BaseSettings):
    """Everything the gateway reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid", yaml_file=None
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    policies_dir: Path = Path("policies")
    cache: CacheSettings = Field(default_factory=CacheSettings)
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    stats: StatsSettings = Field(default_factory=StatsSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    log_content: bool = False
    demo: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = settings_cls.model_config.get("yaml_file")
        sources: list[PydanticBaseSettingsSource] = [env_settings, init_settings]
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the config file (if any) and the environment; raise `ConfigError` naming the key."""
    where = str(path) if path else "built-in defaults"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if content is not None and not isinstance(content, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    try:
        settings = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where)) from exc
    except SettingsError as exc:
        raise ConfigError(f"{where}: bad setting: {exc}") from exc
    return Settings.model_validate(settings.model_dump())


def _describe(exc: ValidationError, where: str) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        env = "GATEWAY_" + "__".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{key} (or {env}): {error['msg']}")
    return f"{where}: bad setting: " + "; ".join(problems)
