"""A small OpenAI-compatible upstream for escalation tests: answers, hangs or fails by model name.

`ok` answers (streaming too), `hang` never answers, `broken` answers HTTP 500, `dies` starts a
streamed answer and drops the connection after its first words. It counts the requests it saw,
per model.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.servers import LocalHTTPStub

ANSWER = "Canberra is the capital of Australia."


class Upstream(LocalHTTPStub):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def post(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = str(body.get("model"))
        self.seen[model] += 1
        if model == "hang":
            self.release.wait(timeout=30)
            return
        if model == "broken":
            self.send_json(handler, 500, {"error": {"message": "upstream broke", "type": "server"}})
            return
        if body.get("stream"):
            _stream(handler, model, die_after=2 if model == "dies" else None)
        else:
            self.send_json(handler, 200, _completion(model))


def _stream(handler: BaseHTTPRequestHandler, model: str, die_after: int | None) -> None:
    handler.send_response(200)
    handler.send_header("content-type", "text/event-stream")
    handler.send_header("connection", "close")
    if die_after is not None:  # promise more than is sent: the client sees a cut
        handler.send_header("content-length", "1000000")
    handler.end_headers()
    handler.close_connection = True
    words = ANSWER.split(" ")
    for i, word in enumerate(words):
        if i == die_after:
            return
        piece = word if i == 0 else " " + word
        chunk = _chunk(model, {"content": piece}, None)
        handler.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        handler.wfile.flush()
        time.sleep(0.01)
    final = _chunk(model, {}, "stop")
    final["usage"] = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}
    handler.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\n")
    handler.wfile.write(b"data: [DONE]\n\n")
    handler.wfile.flush()


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"{model}-large",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": f"{model}-large",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
