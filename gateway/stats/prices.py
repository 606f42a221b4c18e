"""What a token costs at an escalation model, from LiteLLM's price list.

A `model_name` of the escalation list is priced, in this order, by the `input_cost_per_token` /
`output_cost_per_token` of its `litellm_params` or its `model_info` (LiteLLM's own way to price
a private deployment), else by LiteLLM's model price map under `model_info.base_model` (as
LiteLLM prices Azure deployments), then `litellm_params.model` (with and without the provider
prefix). A model with no known price has none: the saving is then not
estimated, rather than estimated at zero.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Price:
    model: str
    input_usd: float
    output_usd: float

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_usd + completion_tokens * self.output_usd


class Prices:
    """Prices of the escalation models, by `model_name`; looked up once each."""

    def __init__(
        self, model_list: Sequence[Mapping[str, Any]], cost_map: Mapping[str, Any] | None = None
    ) -> None:
        self._entries = {str(m["model_name"]): m for m in model_list if "model_name" in m}
        self._cost_map = cost_map
        self._known: dict[str, Price | None] = {}

    def of(self, model_name: str) -> Price | None:
        if model_name not in self._known:
            self._known[model_name] = self._look_up(model_name)
        return self._known[model_name]

    def _look_up(self, model_name: str) -> Price | None:
        entry = self._entries.get(model_name)
        if entry is None:
            return None
        params: Mapping[str, Any] = entry.get("litellm_params") or {}
        info: Mapping[str, Any] = entry.get("model_info") or {}
        model = str(params.get("model") or model_name)
        for source in (params, info):
            price = _price(model, source)
            if price is not None:
                return price
        cost_map = self._cost_map if self._cost_map is not None else _litellm_cost_map()
        base = str(info.get("base_model") or "")
        for name in (base, model, model.partition("/")[2]):
            price = _price(name, cost_map.get(name) or {}) if name else None
            if price is not None:
                return price
        return None


def _price(model: str, source: Mapping[str, Any]) -> Price | None:
    try:
        given_in = source.get("input_cost_per_token")
        given_out = source.get("output_cost_per_token")
        if given_in is None and given_out is None:
            return None
        return Price(model, float(given_in or 0.0), float(given_out or 0.0))
    except (TypeError, ValueError):
        return None


def _litellm_cost_map() -> Mapping[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetched at run time
    import litellm

    cost_map: Mapping[str, Any] = litellm.model_cost
    return cost_map
