"""Running the local model and the scorer over a dataset, in batches, resumable.

Each batch answers its questions in one decoding batch (adapter off), scores the answers in one
forward pass (adapter on), judges them, and appends one JSON line per item to
`OUT/results.jsonl`, flushed before the next batch starts. A rerun with the same `OUT` skips every
item already there (matched by line number and a hash of the line), so an interrupted run resumes
where it stopped; `OUT/run.json` records the model and settings, and a rerun with other ones is
refused unless asked to start afresh.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from gateway.certainty import Certainty, ScoreResult, ScoringMode
from gateway.engine.local import DecodeRow
from gateway.errors import InvalidRequest
from gateway.evaluate.dataset import EvalItem
from gateway.evaluate.policy_file import ConfidenceKind
from gateway.evaluate.scores import ScoreRecord
from gateway.types import ChatRequest, Document, Generation, Message, SamplingParams

RESULTS = "results.jsonl"
MANIFEST = "run.json"


class BatchEngine(Protocol):
    """The batched methods of `LocalEngine` that an evaluation run needs."""

    @property
    def model_id(self) -> str: ...

    @property
    def scoring_mode(self) -> ScoringMode: ...

    def answer_prompt(self, request: ChatRequest) -> list[int]: ...

    def certainty_prompt(
        self, messages: Sequence[Message], answer: str, documents: Sequence[Document] = ()
    ) -> list[int]: ...

    def decode(self, rows: list[DecodeRow]) -> list[Generation]: ...

    def score_logits(self, prompts: Sequence[list[int]]) -> list[ScoreResult]: ...

    def score_generate(self, prompts: Sequence[list[int]]) -> list[ScoreResult]: ...


@dataclass(frozen=True)
class RunSummary:
    total: int
    reused: int
    new: int
    failed: int


BatchCallback = Callable[[int], None]
"""Called after each batch is written, with the number of items done so far."""


def run_dataset(
    engine: BatchEngine,
    items: Sequence[EvalItem],
    out_dir: Path,
    *,
    sampling: SamplingParams,
    batch_size: int = 8,
    fresh: bool = False,
    on_batch: BatchCallback | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], RunSummary]:
    """Answer, score and judge every item; return one result per item, in item order."""
    if batch_size < 1:
        raise InvalidRequest("the batch size must be at least 1", param="batch_size")
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS
    manifest = {
        "model": engine.model_id,
        "scoring_mode": engine.scoring_mode,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
    }
    _check_manifest(out_dir / MANIFEST, manifest, fresh)
    done = {} if fresh else _load_results(results_path, {item.key for item in items})
    _rewrite(results_path, list(done.values()))
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    reused = len(done)
    todo = [item for item in items if item.key not in done]
    with (
        results_path.open("a", encoding="utf-8") as out,
        tqdm(
            total=len(items), initial=reused, unit="item", file=sys.stderr, disable=not progress
        ) as bar,
    ):
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for record in run_batch(engine, batch, sampling):
                out.write(json.dumps(record) + "\n")
                done[record["key"]] = record
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(done))
    results = [done[item.key] for item in items]
    failed = sum(1 for r in results if r.get("error"))
    return results, RunSummary(total=len(items), reused=reused, new=len(todo), failed=failed)


def run_batch(
    engine: BatchEngine, items: Sequence[EvalItem], sampling: SamplingParams
) -> list[dict[str, Any]]:
    """Answer (unless a response is given), score and judge a batch of items."""
    records = {item.key: _base_record(item) for item in items}
    answers: dict[str, str] = {}
    to_decode: list[tuple[EvalItem, list[int]]] = []
    for item in items:
        if item.response is not None:
            answers[item.key] = item.response
            continue
        request = ChatRequest(messages=item.messages, documents=item.documents, sampling=sampling)
        try:
            to_decode.append((item, engine.answer_prompt(request)))
        except InvalidRequest as exc:
            records[item.key]["error"] = exc.message
    if to_decode:
        rows = [DecodeRow(prompt, sampling, adapter=False) for _, prompt in to_decode]
        for (item, _), generation in zip(to_decode, engine.decode(rows), strict=True):
            answers[item.key] = generation.text
            records[item.key]["finish_reason"] = generation.finish_reason
    to_score: list[tuple[EvalItem, list[int]]] = []
    for item in items:
        if item.key not in answers:
            continue
        records[item.key]["response"] = answers[item.key]
        try:
            prompt = engine.certainty_prompt(item.messages, answers[item.key], item.documents)
        except InvalidRequest as exc:
            records[item.key]["error"] = exc.message
            continue
        to_score.append((item, prompt))
    if to_score:
        prompts = [prompt for _, prompt in to_score]
        scorer = engine.score_generate if engine.scoring_mode == "generate" else engine.score_logits
        for (item, _), result in zip(to_score, scorer(prompts), strict=True):
            record = records[item.key]
            record.update(result.as_dict())
            if not isinstance(result, Certainty):
                record["error"] = "the adapter's reply holds no score"
            verdict = item.judge.judge(answers[item.key])
            record["correct"] = verdict.correct
            record["extracted"] = verdict.extracted
    return [records[item.key] for item in items]


def _base_record(item: EvalItem) -> dict[str, Any]:
    return {
        "key": item.key,
        "line": item.line,
        "id": item.item_id,
        "escalated_correct": item.escalated_correct,
        "cost": {"local": item.cost_local, "large": item.cost_large},
        "error": None,
    }


def score_records(
    results: Sequence[dict[str, Any]], confidence: ConfidenceKind
) -> list[ScoreRecord]:
    """The SCORES.jsonl view of the results; failed items are left out."""
    field = "expected_confidence" if confidence == "expected" else "confidence"
    records: list[ScoreRecord] = []
    for result in results:
        if result.get("error") or result.get(field) is None:
            continue
        cost = result.get("cost") or {}
        records.append(
            ScoreRecord(
                confidence=min(max(float(result[field]), 0.0), 1.0),
                correct=bool(result["correct"]),
                escalated_correct=result.get("escalated_correct"),
                cost_local=float(cost.get("local", 0.0)),
                cost_large=float(cost.get("large", 1.0)),
            )
        )
    return records


def _check_manifest(path: Path, manifest: dict[str, Any], fresh: bool) -> None:
    if fresh or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    changed = [key for key, value in manifest.items() if previous.get(key) != value]
    if changed:
        raise InvalidRequest(
            f"{path.parent} holds results of another run ({', '.join(changed)} differ); "
            "use another --out folder, or --fresh to discard them"
        )


def _load_results(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Results already written for the current items; a torn last line is dropped."""
    if not path.is_file():
        return {}
    found: dict[str, dict[str, Any]] = {}
    for raw in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("key") in wanted:
            found[record["key"]] = record
    return found


def _rewrite(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write the kept results afresh (atomically), so appends never follow a torn line."""
    partial = path.with_suffix(".jsonl.tmp")
    with partial.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    partial.replace(path)
