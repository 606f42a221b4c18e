"""A small OpenAI-compatible upstream for escalation tests: answers, hangs or fails by model name.

`ok` answers (streaming too), `hang` never answers, `broken` answers HTTP 500, `dies` starts a
streamed answer and drops the connection after its first words. It counts the requests it saw,
per model.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "Canberra is the capital of Australia."


class Upstream:
    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                model = str(body.get("model"))
                upstream.seen[model] += 1
                if model == "hang":
                    upstream.release.wait(timeout=30)
                    return
                if model == "broken":
                    self._json(500, {"error": {"message": "upstream broke", "type": "server"}})
                    return
                if body.get("stream"):
                    self._stream(model, die_after=2 if model == "dies" else None)
                else:
                    self._json(200, _completion(model))

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, model: str, die_after: int | None) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                if die_after is not None:  # promise more than is sent: the client sees a cut
                    self.send_header("content-length", "1000000")
                self.end_headers()
                words = ANSWER.split(" ")
                for i, word in enumerate(words):
                    if i == die_after:
                        self.close_connection = True
                        return
                    piece = word if i == 0 else " " + word
                    chunk = _chunk(model, {"content": piece}, None)
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(0.01)
                final = _chunk(model, {}, "stop")
                final["usage"] = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}
                self.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


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
