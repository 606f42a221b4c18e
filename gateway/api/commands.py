"""Command-line entries for the server: `serve` and `policies check`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn

    from gateway.api.keys import KeyRing

log = logging.getLogger(__name__)

STARTUP_FAILURE = 3  # uvicorn's exit code when the server could not start
CLOSE_GRACE_S = 5  # after draining: how long uvicorn waits for connections still open


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app
    from gateway.api.keys import KeyRing, read_keys
    from gateway.engine.factory import load_local_model
    from gateway.logs import configure_logging
    from gateway.policy import load_policies

    config = Path(args.config) if args.config else None
    # Before anything slow (the demo's model build): the log format, then the address rule.
    given = _with_address(load_settings(config), args.host, args.port)
    keys = read_keys(given.auth)
    configure_logging(
        fmt=given.server.log_format,
        level=logging.getLogger().level,
        secrets=_secrets(given, [entry.key for entry in keys]),
    )
    _check_exposure(given, KeyRing.from_entries(keys), insecure=args.insecure_no_auth)
    if args.demo:
        from gateway.demo import prepare_demo

        settings = prepare_demo(config, host=args.host, port=args.port)
        if keys and not settings.auth.api_keys:  # keys from a file only: the demo's own calls
            settings = _demo_escalation_key(settings, keys[0].key)  # need one of them too
    else:
        settings = load_settings(config)
    settings = _with_address(settings, args.host, args.port)
    # Fail before binding the port, with one line: bad policies, then the model.
    load_policies(settings.policies_dir)
    app = create_app(settings, engine=load_local_model(settings))
    server = uvicorn.Server(uvicorn_config(app, settings))

    def stop_serving() -> None:
        server.should_exit = True

    app.state.stop_serving = stop_serving
    server.run()
    return 0 if server.started else STARTUP_FAILURE


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How `serve` runs the app."""
    import uvicorn

    from gateway.api.server import ConnectionLimits, protocol_class

    server = settings.server
    limits = ConnectionLimits(
        max_header_bytes=server.max_header_bytes,
        header_timeout_s=server.header_timeout_s,
        body_timeout_s=server.body_timeout_s,
        max_connections=server.max_connections,
    )
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        http=protocol_class(server.http, limits),
        h11_max_incomplete_event_size=server.max_header_bytes,  # with `http: h11`
        timeout_keep_alive=server.keep_alive_s,
        proxy_headers=True,
        forwarded_allow_ips=server.trusted_proxies,
        loop=settings.server.loop,
        log_level="info",
        log_config=None,  # uvicorn's loggers propagate to our JSON handler
        access_log=False,  # the request middleware logs each request, with its id
        server_header=False,  # no `server: uvicorn`: the software is nobody's business
        # SIGTERM drains first (see `gateway.api.app`); this bounds what is left after it, and
        # a Ctrl-C.
        timeout_graceful_shutdown=min(math.ceil(settings.server.drain_s), CLOSE_GRACE_S),
    )


def _demo_escalation_key(settings: Settings, key: str) -> Settings:
    """The demo escalates to this gateway itself, with its placeholder key unless keys are set
    in the settings; with keys from a file only, it uses the file's first key instead."""
    from gateway.demo import ESCALATION_KEY

    model_list = []
    for model in settings.escalation.model_list:
        params = dict(model.get("litellm_params") or {})
        if params.get("api_key") == ESCALATION_KEY:
            params["api_key"] = key
        model_list.append({**model, "litellm_params": params})
    escalation = settings.escalation.model_copy(update={"model_list": model_list})
    return settings.model_copy(update={"escalation": escalation})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(settings: Settings, keys: KeyRing, *, insecure: bool) -> None:
    """Without API keys, only a loopback address, unless the operator says otherwise."""
    host = settings.server.host
    if keys.enabled or _is_loopback(host):
        return
    if not insecure:
        raise ConfigError(
            f"no API keys are configured (auth.api_keys, GATEWAY_AUTH__API_KEYS or "
            f"auth.api_keys_file), so the gateway will not listen on {host}, which is not a "
            "loopback address: configure keys, bind 127.0.0.1, or pass --insecure-no-auth"
        )
    log.warning(
        "--insecure-no-auth: serving without API keys on a non-loopback address",
        extra={"host": host},
    )


def _secrets(settings: Settings, keys: list[str]) -> Iterator[str]:
    """What the log lines must never show: API keys, escalation and vLLM credentials, the Redis
    password."""
    yield from keys
    for model in settings.escalation.model_list:
        params = model.get("litellm_params") or {}
        for name in ("api_key", "aws_secret_access_key", "vertex_credentials"):
            value = params.get(name)
            if isinstance(value, str) and not value.startswith("os.environ/"):
                yield value
    if settings.engine.vllm_api_key:
        yield settings.engine.vllm_api_key
    if settings.cache.url:
        password = urlsplit(settings.cache.url).password
        if password:
            yield unquote(password)


def _with_address(settings: Settings, host: str | None, port: int | None) -> Settings:
    server = settings.server.model_copy(
        update={
            "host": host if host is not None else settings.server.host,
            "port": port if port is not None else settings.server.port,
        }
    )
    return settings.model_copy(update={"server": server})


def _policies_check(args: argparse.Namespace) -> int:
    from gateway.policy import load_policies
    from gateway.policy.store import missing_escalation_targets

    if args.dir:
        folder = Path(args.dir)
        targets: set[str] | None = None
    else:
        settings = load_settings(Path(args.config) if args.config else None)
        folder = settings.policies_dir
        targets = {str(m.get("model_name")) for m in settings.escalation.model_list}
    policies = load_policies(folder)
    rows = [("policy", "confidence", "return", "escalate", "withhold", "on error", "to")]
    for name in sorted(policies.policies):
        policy = policies.policies[name]
        bands = {
            action.value: f"[{_figure(low)}, {_figure(high)})"
            for action, low, high in policy.bands()
        }
        if "return" in bands:
            bands["return"] = f"[{_figure(policy.return_at)}, 1.00]"
        rows.append(
            (
                name,
                policy.confidence,
                bands.get("return", "-"),
                bands.get("escalate", "-"),
                bands.get("withhold", "-"),
                policy.on_escalation_error if policy.escalates else "-",
                policy.escalate_to if policy.escalates and policy.escalate_to else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(policies.policies)} policies valid in {folder} (version {policies.version})")
    if targets is not None:
        for warning in missing_escalation_targets(policies, targets):
            print(f"warning: {warning}")
    return 0


def _figure(value: float) -> str:
    """A threshold as written (every digit it has), at least two decimals: 0.75, 0.468254."""
    text = repr(float(value))
    if "e" in text or "." not in text:
        return text
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", help="YAML config file (GATEWAY_* variables override it)")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="offline demo: miniature models with random weights (answers are noise)",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback address without API keys (anyone who reaches it may use it)",
    )
    serve.set_defaults(run=_serve)

    policies = commands.add_parser("policies", help="policy files")
    actions = policies.add_subparsers(dest="policies_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate policy files and print their bands")
    check.add_argument("dir", nargs="?", help="policies folder (default: the config's)")
    check.add_argument("--config", help="config file (for the folder and escalation targets)")
    check.set_defaults(run=_policies_check)
