"""Command-line entries for the server: `serve` and `policies check`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gateway.config import Settings, load_settings

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app
    from gateway.engine.factory import engine_from_settings
    from gateway.policy import load_policies

    config = Path(args.config) if args.config else None
    if args.demo:
        from gateway.demo import prepare_demo

        settings = prepare_demo(config, host=args.host, port=args.port)
    else:
        settings = load_settings(config)
    settings = _with_address(settings, args.host, args.port)
    # Fail before binding the port, with one line: bad policies, then the model.
    load_policies(settings.policies_dir)
    engine = engine_from_settings(settings.model) if settings.engine.kind == "local" else None
    app = create_app(settings, engine=engine)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


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
        bands = {action.value: f"[{low:.2f}, {high:.2f})" for action, low, high in policy.bands()}
        if "return" in bands:
            bands["return"] = f"[{policy.return_at:.2f}, 1.00]"
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
    serve.set_defaults(run=_serve)

    policies = commands.add_parser("policies", help="policy files")
    actions = policies.add_subparsers(dest="policies_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate policy files and print their bands")
    check.add_argument("dir", nargs="?", help="policies folder (default: the config's)")
    check.add_argument("--config", help="config file (for the folder and escalation targets)")
    check.set_defaults(run=_policies_check)
