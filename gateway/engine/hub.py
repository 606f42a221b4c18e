"""Before a model is loaded from the Hugging Face hub: can it be?

Left to itself, a load without network costs huggingface_hub's retries (about 50 s and two dozen
warning lines) before one error. Here one request with a short time limit decides, once per
process, whether the hub answers:

- a local folder is left to the loader (it names a missing folder itself);
- the hub answers: the loader downloads what it needs (or finds it in the cache);
- the hub does not answer, or `HF_HUB_OFFLINE=1` is set: a model already in the local cache is
  loaded from its cached folder; one that is not stops start-up with one line that names it and
  the two ways out (download it first with `hf download`, or the offline demo).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from typing import Literal

from gateway.config import ModelSettings, is_local_path
from gateway.errors import ModelLoadError

log = logging.getLogger(__name__)

HUB_CHECK_TIMEOUT_S = 5.0
"""How long the one request that decides whether the hub answers may take."""

Place = Literal["local", "hub", "cache"]


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def in_cache(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether `filename` of the repository is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # not a valid repository id: the loader says so
        return False
    return isinstance(found, str)


def hub_answers(url: str, timeout_s: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """Whether the hub at `url` answers an HTTP request (any status) within `timeout_s`.

    Asked once per process and address. The request runs in a daemon thread, so a name look-up
    that hangs (outside httpx's time limits) cannot hold start-up or the exit either."""
    return _hub_answers(url.rstrip("/"), timeout_s)


@functools.cache
def _hub_answers(url: str, timeout_s: float) -> bool:
    import httpx

    answered = threading.Event()

    def ask() -> None:
        try:
            httpx.head(f"{url}/api/models", timeout=timeout_s)
        except httpx.HTTPError:
            return
        answered.set()

    with _quiet():
        thread = threading.Thread(target=ask, name="hub-check", daemon=True)
        thread.start()
        thread.join(timeout_s + 0.5)
    return answered.is_set()


def locate(
    name: str,
    *,
    what: str,
    setting: str,
    marker: str,
    revision: str | None = None,
    timeout_s: float = HUB_CHECK_TIMEOUT_S,
) -> Place:
    """Where `name` will load from, or `ModelLoadError` (one line) when from nowhere.

    `marker` is a file the model's repository always holds (`config.json`), used to find it in
    the cache; `setting` names the key that points at a local folder instead."""
    if is_local_path(name):
        return "local"
    cached = in_cache(name, marker, revision)
    if offline():
        if cached:
            return "cache"
        raise ModelLoadError(_missing(name, what, setting, marker, "HF_HUB_OFFLINE is set"))
    if hub_answers(endpoint(), timeout_s):
        return "hub"
    if cached:
        return "cache"
    why = f"the Hugging Face hub ({endpoint()}) could not be reached within {timeout_s:g} s"
    raise ModelLoadError(_missing(name, what, setting, marker, why))


def prepare(model: ModelSettings, timeout_s: float = HUB_CHECK_TIMEOUT_S) -> ModelSettings:
    """`model`, checked: the base model and the adapter can be loaded from somewhere.

    One that can only come from the local cache is replaced by its cached folder (the snapshot of
    its revision), so that nothing asks the absent hub again."""
    sub = model.adapter_subfolder.strip("/") if model.adapter_subfolder else ""
    base = locate(
        model.base,
        what="base model",
        setting="model.base / GATEWAY_MODEL__BASE",
        marker="config.json",
        revision=model.base_revision,
        timeout_s=timeout_s,
    )
    adapter = locate(
        model.adapter,
        what="adapter",
        setting="model.adapter / GATEWAY_MODEL__ADAPTER",
        marker=f"{sub}/adapter_config.json" if sub else "adapter_config.json",
        revision=model.adapter_revision,
        timeout_s=timeout_s,
    )
    update: dict[str, str] = {}
    if base == "cache":
        update["base"] = cached_folder(model.base, model.base_revision)
        update["name"] = model.display_name  # the hub id, not the snapshot's folder
    if adapter == "cache":
        update["adapter"] = cached_folder(model.adapter, model.adapter_revision)
    if update:
        log.warning(
            "the Hugging Face hub is not used: loading from the local cache",
            extra={"folders": sorted(update.values())},
        )
    return model.model_copy(update=update)


def cached_folder(repo_id: str, revision: str | None) -> str:
    """The local cache's folder of `repo_id` at `revision` (default: the last one fetched)."""
    from huggingface_hub import snapshot_download

    return str(snapshot_download(repo_id, revision=revision, local_files_only=True))


def _missing(name: str, what: str, setting: str, marker: str, why: str) -> str:
    folder = marker.rpartition("/")[0]
    include = f' --include "{folder}/*"' if folder else ""
    return (
        f"the {what} {name!r} is not in the local Hugging Face cache and {why}: download it "
        f"first with `hf download {name}{include}` (or point {setting} at a local folder), "
        "or try the offline demo: `certainty-gateway serve --demo`"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No request or retry lines from the HTTP and hub libraries while the hub is asked."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
