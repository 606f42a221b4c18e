"""The counters of one policy and tenant over one minute (a `Cell`), and their flat form.

A cell holds numbers only: decisions by action, confidences in ten bins, cache hits, stage
latencies in log-spaced bins, escalation spend and the baseline it is compared with, and the
audit's verdicts by confidence bin. Never a prompt or an answer.

The flat form (`fields()` / `add_field`) is a mapping of short names to numbers, the same in
process and in a Redis hash, so replicas add their cells with `HINCRBY` / `HINCRBYFLOAT`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

ACTIONS = ("return", "withhold", "escalate")
STAGES = ("generate", "score", "escalate")
CONFIDENCE_BINS = 10

LATENCY_BINS = 64
LATENCY_FLOOR_S = 0.0005
LATENCY_GROWTH = 1.25
"""Bin i holds latencies in [floor * growth**(i-1), floor * growth**i); bin 0 all below the
floor, the last all above ~0.5 ms * 1.25**63 (~630 s). A quantile is read to within 25 %."""
_LOG_GROWTH = math.log(LATENCY_GROWTH)

INT_FIELDS = ("requests", "hits", "priced", "sampled", "skipped", "unclear", "failed")
FLOAT_FIELDS = ("spend_usd", "baseline_usd", "audit_usd")


def confidence_bin(confidence: float) -> int:
    return min(max(int(confidence * CONFIDENCE_BINS), 0), CONFIDENCE_BINS - 1)


def latency_bin(seconds: float) -> int:
    if seconds < LATENCY_FLOOR_S:
        return 0
    return min(int(math.log(seconds / LATENCY_FLOOR_S) / _LOG_GROWTH) + 1, LATENCY_BINS - 1)


def latency_bin_seconds(index: int) -> float:
    """A representative latency of bin `index`: the geometric middle of its bounds."""
    if index == 0:
        return LATENCY_FLOOR_S / 2
    return float(LATENCY_FLOOR_S * LATENCY_GROWTH ** (index - 0.5))


class Cell:
    """Counters of one (policy, tenant) over one span of time."""

    __slots__ = (
        "actions",
        "audit_usd",
        "baseline_usd",
        "confidence",
        "correct",
        "failed",
        "hits",
        "judged",
        "judged_confidence",
        "latency",
        "priced",
        "requests",
        "sampled",
        "skipped",
        "spend_usd",
        "unclear",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.actions = [0, 0, 0]  # by ACTIONS
        self.confidence = [0] * CONFIDENCE_BINS
        self.hits = 0
        self.latency: dict[str, list[int]] = {}
        self.spend_usd = 0.0
        self.baseline_usd = 0.0  # the same requests priced at the escalation model's rates
        self.priced = 0  # requests with a baseline price
        # the audit
        self.sampled = 0
        self.skipped = 0  # sampled, but the audit was at its concurrency limit, paused or stopped
        self.judged = [0] * CONFIDENCE_BINS
        self.correct = [0] * CONFIDENCE_BINS
        self.judged_confidence = [0.0] * CONFIDENCE_BINS  # sums, for each bin's mean
        self.unclear = 0  # the judge said neither yes nor no
        self.failed = 0  # the judge did not answer
        self.audit_usd = 0.0

    def add_latency(self, stage: str, seconds: float) -> None:
        bins = self.latency.get(stage)
        if bins is None:
            bins = self.latency[stage] = [0] * LATENCY_BINS
        bins[latency_bin(seconds)] += 1

    def merge(self, other: Cell) -> None:
        for name, value in other.fields().items():
            self.add_field(name, value)

    def fields(self) -> dict[str, float]:
        """The non-zero counters by flat name (`a.return`, `c.3`, `l.score.12`, `j.7`, ...)."""
        out: dict[str, float] = {}
        for name in INT_FIELDS + FLOAT_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        for action, count in zip(ACTIONS, self.actions, strict=True):
            if count:
                out[f"a.{action}"] = count
        for prefix, values in (
            ("c", self.confidence),
            ("j", self.judged),
            ("k", self.correct),
            ("s", self.judged_confidence),
        ):
            for index, value in enumerate(values):
                if value:
                    out[f"{prefix}.{index}"] = value
        for stage, bins in self.latency.items():
            for index, count in enumerate(bins):
                if count:
                    out[f"l.{stage}.{index}"] = count
        return out

    def add_field(self, name: str, value: float) -> None:
        """Add `value` to the counter named `name`; a name this version does not know is ignored
        (a newer replica may write more)."""
        head, _, rest = name.partition(".")
        try:
            if not rest:
                if name in INT_FIELDS:
                    setattr(self, name, getattr(self, name) + int(value))
                elif name in FLOAT_FIELDS:
                    setattr(self, name, getattr(self, name) + float(value))
            elif head == "a" and rest in ACTIONS:
                self.actions[ACTIONS.index(rest)] += int(value)
            elif head in ("c", "j", "k"):
                target = {"c": self.confidence, "j": self.judged, "k": self.correct}[head]
                target[int(rest)] += int(value)
            elif head == "s":
                self.judged_confidence[int(rest)] += float(value)
            elif head == "l":
                stage, _, index = rest.rpartition(".")
                if stage in STAGES:
                    if stage not in self.latency:
                        self.latency[stage] = [0] * LATENCY_BINS
                    self.latency[stage][int(index)] += int(value)
        except (ValueError, IndexError):
            return


Key = tuple[str, str]
"""(policy, tenant); the tenant is the API key id, "" without keys."""

SEPARATOR = "|"  # in neither a policy name nor a key id


def flatten(cells: Mapping[Key, Cell]) -> Iterator[tuple[str, float]]:
    """`policy|tenant|name` -> value, for every non-zero counter of `cells`."""
    for (policy, tenant), cell in cells.items():
        for name, value in cell.fields().items():
            yield f"{policy}{SEPARATOR}{tenant}{SEPARATOR}{name}", value


def unflatten(fields: Mapping[str, float], into: dict[Key, Cell]) -> None:
    """Add flat counters (as `flatten` writes them) to `into`; malformed names are skipped."""
    for flat, value in fields.items():
        parts = flat.split(SEPARATOR)
        if len(parts) != 3:
            continue
        policy, tenant, name = parts
        cell = into.get((policy, tenant))
        if cell is None:
            cell = into[(policy, tenant)] = Cell()
        cell.add_field(name, value)
