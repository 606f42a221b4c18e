"""Build an engine from settings or from explicit paths."""

from __future__ import annotations

from pathlib import Path

from gateway.config import EngineSettings, ModelSettings, load_settings
from gateway.engine import hub
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
