"""Reading JSON Lines input with errors that name the file, the line and the field."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import InvalidRequest


@dataclass(frozen=True)
class Line:
    """One non-blank line of a JSON Lines file: its 1-based number, text and object."""

    path: Path
    number: int
    text: str
    value: Mapping[str, Any]

    def error(self, message: str, field: str | None = None) -> InvalidRequest:
        where = f"{self.path}, line {self.number}"
        return InvalidRequest(f"{where}: {message}", param=field)

    def get_bool(self, field: str) -> bool | None:
        value = self.value.get(field)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.error(f"'{field}' must be true or false, got {value!r}", field)
        return value

    def get_probability(self, field: str) -> float | None:
        value = self.value.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(f"'{field}' must be a number, got {value!r}", field)
        number = float(value)
        if not (math.isfinite(number) and 0.0 <= number <= 1.0):
            raise self.error(f"'{field}' must be within [0, 1], got {value!r}", field)
        return number

    def require(self, field: str) -> Any:
        if field not in self.value or self.value[field] is None:
            raise self.error(f"missing field '{field}'", field)
        return self.value[field]

    def costs(self) -> tuple[float, float]:
        """`cost: {"local": x, "large": y}` (any unit, both >= 0); by default local 0, large 1."""
        cost = self.value.get("cost")
        if cost is None:
            return 0.0, 1.0
        if not isinstance(cost, Mapping):
            raise self.error('\'cost\' must be an object like {"local": 0.1, "large": 1}', "cost")
        figures: list[float] = []
        for key, default in (("local", 0.0), ("large", 1.0)):
            value = cost.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(f"'cost.{key}' must be a number, got {value!r}", f"cost.{key}")
            if not (math.isfinite(value) and value >= 0):
                raise self.error(f"'cost.{key}' must be >= 0, got {value!r}", f"cost.{key}")
            figures.append(float(value))
        return figures[0], figures[1]


def read_lines(path: Path) -> Iterator[Line]:
    """Each non-blank line as a JSON object; a bad line raises `InvalidRequest` naming it."""
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{path}: not UTF-8 text") from exc
    for number, raw in enumerate(content.split("\n"), start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise InvalidRequest(f"{path}, line {number}: each line must be a JSON object")
        yield Line(path=path, number=number, text=text, value=value)
