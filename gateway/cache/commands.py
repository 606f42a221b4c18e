"""Command-line entries for the cache: `cache clear [--config FILE] [--policy NAME]`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.config import CacheSettings, load_settings

# An operator's command, not a request: give a remote Redis time to scan.
CLEAR_TIMEOUT_S = 5.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = commands.add_parser("cache", help="manage the decision cache")
    actions = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    clear = actions.add_parser("clear", help="delete cached decisions: all, or one policy's")
    clear.add_argument("--config", help="a gateway config file (else defaults and environment)")
    clear.add_argument("--policy", metavar="NAME", help="only this policy's decisions")
    clear.set_defaults(run=_clear)


def _clear(args: argparse.Namespace) -> int:
    settings = load_settings(Path(args.config) if args.config else None).cache
    if settings.url is None:
        print(
            "the cache is in process (cache.url is not set): it lives inside each running "
            "gateway and empties when it restarts; nothing to clear from here"
        )
        return 0
    removed = asyncio.run(_clear_redis(settings.url, settings, args.policy))
    which = f"policy {args.policy!r}" if args.policy else "all policies"
    print(f"removed {removed} cached decision{'' if removed == 1 else 's'} ({which})")
    return 0


async def _clear_redis(url: str, settings: CacheSettings, policy: str | None) -> int:
    from gateway.cache.redis import RedisCache

    patient = settings.model_copy(update={"timeout_s": max(settings.timeout_s, CLEAR_TIMEOUT_S)})
    cache = RedisCache.from_url(url, patient)
    try:
        return await cache.clear(policy)
    finally:
        await cache.close()
