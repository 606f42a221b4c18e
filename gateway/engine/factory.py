"""Build an engine from settings or from explicit paths: the one place that chooses between
the local model (behind its worker thread) and a model server (vLLM)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.config import EngineSettings, ModelSettings, Settings, load_settings
from gateway.engine import hub
from gateway.engine.base import AsyncEngine, BatchEngine
from gateway.engine.local import LocalEngine, ModelSource


def source_from_settings(model: ModelSettings) -> ModelSource:
    return ModelSource(
        name=model.display_name,
        base=model.base,
        adapter=model.adapter,
        adapter_subfolder=model.adapter_subfolder,
        base_revision=model.base_revision,
        adapter_revision=model.adapter_revision,
    )


def engine_from_settings(model: ModelSettings, engine: EngineSettings | None = None) -> LocalEngine:
    """The local engine of `model`; on a CUDA device, with `engine`'s static KV cache and CUDA
    graphs unless `engine.cuda_graphs` is off."""
    engine = engine or EngineSettings()
    model = hub.prepare(model)  # no hub: one line at once, not a minute of retries
    return LocalEngine.load(
        source_from_settings(model),
        device=model.device,
        dtype=model.dtype,
        scoring_mode=model.scoring_mode,
        max_context=model.max_context,
        decoder="auto" if engine.cuda_graphs else "eager",
        max_batch_size=engine.max_batch_size,
        static_context=engine.max_context,
    )


def load_local_engine(
    *,
    config: Path | None = None,
    base: str | None = None,
    adapter: str | None = None,
    adapter_subfolder: str | None = None,
) -> LocalEngine:
    """The engine the `score` command uses: explicit paths win over the config."""
    settings = load_settings(config)
    model = settings.model
    if base is not None or adapter is not None:
        model = model.model_copy(
            update={
                "base": base or model.base,
                "adapter": adapter or model.adapter,
                "adapter_subfolder": adapter_subfolder,
            }
        )
    return engine_from_settings(model, settings.engine)


def load_local_model(settings: Settings) -> LocalEngine | None:
    """The local model, loaded now (`serve` does this before binding its port, so a model that
    cannot load stops start-up with one line); None when the model runs in vLLM."""
    if settings.engine.kind != "local":
        return None
    return engine_from_settings(settings.model, settings.engine)


async def start_engine(
    settings: Settings, stack: contextlib.AsyncExitStack, *, local: BatchEngine | None = None
) -> AsyncEngine:
    """The engine the pipeline calls, started, its closing pushed on `stack`: vLLM's
    (`engine.kind: vllm`; only the tokenizer is loaded here), or the local model (`local`, or
    loaded from `settings.model`) behind an `EngineWorker`."""
    if settings.engine.kind == "vllm":
        from gateway.engine.remote import RemoteEngine

        remote = await RemoteEngine.open(settings.engine, settings.model)
        remote.display_name = settings.model.name
        stack.push_async_callback(remote.close)
        return remote
    from gateway.engine.worker import EngineWorker

    if local is None:
        local = await asyncio.to_thread(engine_from_settings, settings.model, settings.engine)
    worker = EngineWorker(
        local,
        max_batch_size=settings.engine.max_batch_size,
        batch_wait_ms=settings.engine.batch_wait_ms,
        queue_size=settings.engine.queue_size,
    )
    worker.start()
    stack.push_async_callback(worker.stop)
    return worker
