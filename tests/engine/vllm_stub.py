"""A small vLLM stand-in: the OpenAI-compatible endpoints vLLM serves, answered by the miniature.

It serves, over real HTTP on a free port, in the response shapes vLLM documents:

* `GET /v1/models`: the base model and the LoRA (with `parent`, `max_model_len`);
* `POST /v1/chat/completions`, streamed (SSE, `stream_options.include_usage`) and not, rendered
  with the model's chat template (`documents` included) and decoded by `LocalEngine.decode`;
* `POST /v1/completions` with a text or token-id `prompt` and `logprobs: N`: per generated
  token `tokens`, `token_logprobs`, `top_logprobs` (the N most likely, plus the sampled one, as
  `{token: logprob}`) and `text_offset`.

`model` picks the adapter as vLLM does: the base model's name runs with the adapter off, the
LoRA's name with it on. It can be told to hang (`mode = "hang"`), to answer 500
(`mode = "error"`), or to answer 500 to the next N requests only (`fail_next = N`). It records
every request body it received. The model is not thread-safe: one request uses it at a time.

Run alone: `python -m tests.engine.vllm_stub MODEL_DIR [--port 8001]` (a `make-tiny-model`
folder) to try `engine.kind: vllm` by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from gateway.engine.base import SamplingParams
from gateway.engine.local import DecodeRow, LocalEngine, ModelSource

BASE_MODEL = "granite-micro-base"
ADAPTER_MODEL = "uncertainty"


class StubError(Exception):
    def __init__(self, status: int, message: str, error_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.status,
            }
        }


class VLLMStub:
    """An OpenAI-compatible server in a thread, backed by a `LocalEngine`."""

    def __init__(
        self,
        engine: LocalEngine,
        *,
        base_model: str = BASE_MODEL,
        adapter_model: str = ADAPTER_MODEL,
        max_model_len: int | None = None,
        port: int = 0,
    ) -> None:
        self.engine = engine
        self.base_model = base_model
        self.adapter_model = adapter_model
        self.max_model_len = max_model_len or engine.max_context
        self.mode = "ok"
        self.fail_next = 0
        self.api_key: str | None = None  # like vLLM's --api-key: 401 without this bearer token
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._model_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _authorized(self) -> bool:
                if stub.api_key is None:
                    return True
                if self.headers.get("authorization") == f"Bearer {stub.api_key}":
                    return True
                self._json(401, {"error": "Unauthorized"})  # vLLM's own 401 body
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, stub.models())
                else:
                    self._json(404, StubError(404, "Not Found", "NotFoundError").body())

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                if not self._authorized():
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._json(400, StubError(400, "bad JSON", "BadRequestError").body())
                    return
                path = self.path.rstrip("/")
                with stub._state_lock:
                    stub.requests.append((path, body))
                    failing = stub.mode == "error" or stub.fail_next > 0
                    stub.fail_next = max(0, stub.fail_next - 1)
                if stub.mode == "hang":
                    stub._release.wait(timeout=60)
                    self.close_connection = True
                    return
                if failing:
                    error = StubError(500, "EngineCore encountered an issue", "InternalServerError")
                    self._json(500, error.body())
                    return
                try:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        if path == "/v1/chat/completions":
                            stub.chat(body, self)
                        elif path == "/v1/completions":
                            self._json(200, stub.completions(body))
                        else:
                            self._json(404, StubError(404, "Not Found", "NotFoundError").body())
                except StubError as exc:
                    self._json(exc.status, exc.body())

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def start_events(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream; charset=utf-8")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True

            def event(self, payload: dict[str, Any] | str) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> VLLMStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    @contextlib.contextmanager
    def hanging(self) -> Iterator[None]:
        """Requests sent meanwhile never get an answer (until the stub stops)."""
        self.mode = "hang"
        try:
            yield
        finally:
            self.mode = "ok"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for seen, body in self.requests if seen == path]

    # ---------------------------------------------------------------- endpoints

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        card = {"object": "model", "created": created, "owned_by": "vllm"}
        return {
            "object": "list",
            "data": [
                {
                    **card,
                    "id": self.base_model,
                    "root": self.base_model,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                },
                {
                    **card,
                    "id": self.adapter_model,
                    "root": "/adapters/uncertainty",
                    "parent": self.base_model,
                    "max_model_len": self.max_model_len,
                },
            ],
        }

    def _adapter(self, body: dict[str, Any]) -> bool:
        model = body.get("model")
        if model == self.base_model:
            return False
        if model == self.adapter_model:
            return True
        raise StubError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    def _check_length(self, prompt_tokens: int, max_tokens: int, what: str) -> None:
        if prompt_tokens + max_tokens > self.max_model_len:
            raise StubError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"{what}, {max_tokens} in the completion). Please reduce the length of the "
                f"{what} or completion.",
                "BadRequestError",
            )

    @staticmethod
    def _sampling(body: dict[str, Any]) -> SamplingParams:
        stop = body.get("stop") or ()
        return SamplingParams(
            max_tokens=int(body.get("max_tokens") or 16),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            seed=body.get("seed"),
        )

    def chat(self, body: dict[str, Any], handler: Any) -> None:
        adapter = self._adapter(body)
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        prompt = self.engine.render(messages, body.get("documents") or ())
        sampling = self._sampling(body)
        self._check_length(len(prompt), sampling.max_tokens, "messages")
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body["model"],
        }
        if not body.get("stream"):
            with self._model_lock:
                generation = self.engine.decode([DecodeRow(prompt, sampling, adapter=adapter)])[0]
            handler._json(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": generation.text,
                                "tool_calls": [],
                                "reasoning_content": None,
                            },
                            "logprobs": None,
                            "finish_reason": generation.finish_reason,
                            "stop_reason": None,
                        }
                    ],
                    "usage": _usage(generation.prompt_tokens, generation.completion_tokens),
                    "prompt_logprobs": None,
                },
            )
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **head,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        handler.start_events()
        handler.event(chunk({"role": "assistant", "content": ""}))
        row = DecodeRow(
            prompt,
            sampling,
            adapter=adapter,
            on_text=lambda piece: handler.event(chunk({"content": piece})),
        )
        with self._model_lock:
            generation = self.engine.decode([row])[0]
        handler.event(chunk({"content": ""}, generation.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = _usage(generation.prompt_tokens, generation.completion_tokens)
            handler.event(
                {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        handler.event("[DONE]")

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        adapter = self._adapter(body)
        raw = body.get("prompt")
        if isinstance(raw, str):
            prompt = list(self.engine.tokenizer.encode(raw, add_special_tokens=False))
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            prompt = list(raw)
        else:
            raise StubError(400, "prompt: a string or a list of token ids", "BadRequestError")
        sampling = self._sampling(body)
        self._check_length(len(prompt), sampling.max_tokens, "prompt")
        logprobs = body.get("logprobs")
        with self._model_lock:
            if logprobs is None:
                row = DecodeRow(prompt, sampling, adapter=adapter)
                generation = self.engine.decode([row])[0]
                text, finish, generated = (
                    generation.text,
                    generation.finish_reason,
                    generation.completion_tokens,
                )
                lp_block = None
            else:
                text, finish, generated, lp_block = self._with_logprobs(
                    prompt, sampling, adapter, int(logprobs)
                )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": lp_block,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
            ],
            "usage": _usage(len(prompt), generated),
        }

    @torch.inference_mode()
    def _with_logprobs(
        self, prompt: list[int], sampling: SamplingParams, adapter: bool, top: int
    ) -> tuple[str, str, int, dict[str, Any]]:
        """A plain decoding loop (whole prefix each step: the miniature is tiny) with logprobs."""
        engine = self.engine
        generator = torch.Generator().manual_seed(sampling.seed or 0)
        ids = list(prompt)
        generated: list[int] = []
        tokens: list[str] = []
        token_logprobs: list[float] = []
        top_logprobs: list[dict[str, float]] = []
        offsets: list[int] = []
        finish = "length"
        text = ""
        switch = contextlib.nullcontext() if adapter else engine.model.disable_adapter()
        with switch:
            for _ in range(sampling.max_tokens):
                out = engine.model(
                    input_ids=torch.tensor([ids], device=engine.device), logits_to_keep=1
                )
                logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                if sampling.greedy:
                    token = int(torch.argmax(logprobs).item())
                else:
                    probs = torch.softmax(logprobs / sampling.temperature, dim=-1)
                    token = int(torch.multinomial(probs.cpu(), 1, generator=generator).item())
                values, indices = torch.topk(logprobs, top)
                alternatives = {
                    engine.tokenizer.decode([int(i)]): float(v)
                    for v, i in zip(values.tolist(), indices.tolist(), strict=True)
                }
                piece = engine.tokenizer.decode([token])
                alternatives.setdefault(piece, float(logprobs[token]))
                offsets.append(len(text))
                tokens.append(piece)
                token_logprobs.append(float(logprobs[token]))
                top_logprobs.append(alternatives)
                if token == engine.eos_id:
                    finish = "stop"
                    break
                generated.append(token)
                ids.append(token)
                text = engine.tokenizer.decode(generated, skip_special_tokens=True)
        block = {
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "tokens": tokens,
            "top_logprobs": top_logprobs,
        }
        return text, finish, len(tokens), block


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a make-tiny-model folder (base/ and adapter/)")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    folder = Path(args.model_dir)
    engine = LocalEngine.load(
        ModelSource(base=str(folder / "base"), adapter=str(folder / "adapter")), device="cpu"
    )
    stub = VLLMStub(engine, port=args.port).start()
    print(f"serving {BASE_MODEL!r} and {ADAPTER_MODEL!r} at {stub.base_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stub._thread.join()


if __name__ == "__main__":
    main()
