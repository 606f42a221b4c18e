"""A small vLLM stand-in: the OpenAI-compatible endpoints vLLM serves, answered by the miniature.

It mirrors vLLM 0.33.0 (the `vllm serve` OpenAI server; checked against that release's source:
`entrypoints/openai/{chat_completion,completion,models}`, `renderers/params.py`,
`sampling_params.py`, `serve/middleware/authenticate.py`, `serve/utils/sse_keep_alive.py`). It is
the contract the remote engine's tests hold it to, so where vLLM refuses, this refuses, with
vLLM's status, error body and message. Over real HTTP on a free port it serves:

* `GET /health` (never behind the key) and `GET /v1/models`: the base model's card (with
  `max_model_len`) and the LoRA's (`parent` = the base, `max_model_len` null);
* `POST /v1/chat/completions`, streamed (SSE, `stream_options.include_usage`) and not, rendered
  with the model's chat template and decoded by `LocalEngine.decode`. `documents` must be a list
  of objects with string values (vLLM's `list[dict[str, str]]`), else a 400 validation error;
  the message carries `reasoning` (vLLM's name), no `tool_calls` when there are none;
* `POST /v1/completions` with a text prompt (`add_special_tokens`, default true) or token ids
  (each checked against the vocabulary), `logprobs: N` (at most `max_logprobs`, vLLM's
  `--max-logprobs`, default 20): per generated token `tokens`, `token_logprobs`, `top_logprobs`
  (the N most likely plus the sampled one, `{token: logprob}`, logprobs floored at -9999) and
  `text_offset`. With `logprob_token_ids` (`logprobs` must be set; at most 128 ids, each in the
  vocabulary) `top_logprobs` holds the sampled token and exactly those ids instead.

Context length as vLLM 0.33 rules it: a prompt longer than `max_model_len` is a 400 ("...exceeds
this limit even without any output tokens"), so is a `max_tokens` above `max_model_len`;
otherwise `max_tokens` is lowered to what the context leaves (the answer then ends with
`finish_reason: "length"`), and a prompt of exactly `max_model_len` leaves 0, which vLLM's
sampling parameters refuse: "max_tokens must be at least 1, got 0.".

Server flags: `return_tokens_as_token_ids` (vLLM's `--return-tokens-as-token-ids`: tokens are
spelled `token_id:N`, unless the request says `return_tokens_as_token_ids: false`),
`keep_alive_s` (`--sse-keep-alive-interval`: a `: keep-alive` comment line whenever a stream has
been idle that long), `api_key` (`--api-key`: 401 `{"error": "Unauthorized"}` on `/v1/...`
without the bearer token), `max_model_len`, `max_logprobs`. `digit_ids` plays an older or a
stricter server: `"honoured"` (vLLM 0.33), `"ignored"` (a vLLM without the field: unknown
fields are ignored) or `"refused"` (a 400 naming it).

`model` picks the adapter as vLLM does: the base model's name runs with the adapter off, the
LoRA's name with it on. It can be told to hang before answering (`hanging()`), to stall a stream
after its first chunk (`stalling()`), to answer 500 (`mode = "error"`), or to answer 500 to the
next N requests only (`fail_next = N`). It records every request body it received. The model is
not thread-safe: one request uses it at a time.

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
from typing import Any, Literal

import torch

from gateway.engine.local import DecodeRow, LocalEngine, ModelSource
from gateway.types import SamplingParams

BASE_MODEL = "granite-micro-base"
ADAPTER_MODEL = "uncertainty"
VLLM_VERSION = "0.33.0"
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
"""The paths vLLM's `--api-key` guards; `/health`, `/version`, `/metrics` stay open."""
MAX_LOGPROB_TOKEN_IDS = 128
KEEP_ALIVE = b": keep-alive\n\n"

DigitIds = Literal["honoured", "ignored", "refused"]


class StubError(Exception):
    def __init__(
        self, status: int, message: str, error_type: str = "BadRequestError", param: Any = None
    ):
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


def _validation_error(loc: tuple[Any, ...], msg: str, kind: str, value: Any) -> StubError:
    """vLLM's answer to a request its pydantic model refuses (`validation_exception_handler`)."""
    where = ".".join(str(part) for part in loc)
    detail = {"type": kind, "loc": where, "msg": msg, "input": value}
    return StubError(400, f"1 validation error:\n  {detail}", "Bad Request", where)


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
        vocab = int(getattr(engine.model.config, "vocab_size", 0) or 0)
        self.max_token_id = max(vocab, len(engine.tokenizer)) - 1
        self.max_logprobs = 20
        self.return_tokens_as_token_ids = False
        self.keep_alive_s = 0.0
        self.keep_alives_sent = 0
        self.digit_ids: DigitIds = "honoured"
        self.mode = "ok"
        self.fail_next = 0
        self.api_key: str | None = None
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
                if stub.api_key is None or not self.path.startswith(GUARDED_PREFIXES):
                    return True
                scheme, _, token = (self.headers.get("authorization") or "").partition(" ")
                if scheme.lower() == "bearer" and token == stub.api_key:
                    return True
                self._json(401, {"error": "Unauthorized"})  # vLLM's own 401 body
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                path = self.path.rstrip("/")
                if path == "/health":
                    self.send_response(200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif path == "/v1/models":
                    self._json(200, stub.models())
                else:
                    self._json(404, {"detail": "Not Found"})  # FastAPI's unknown route

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                if not self._authorized():
                    return
                path = self.path.rstrip("/")
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    error = _validation_error(("body",), "JSON decode error", "json_invalid", "")
                    self._json(400, error.body())
                    return
                with stub._state_lock:
                    stub.requests.append((path, body))
                    failing = stub.mode == "error" or stub.fail_next > 0
                    stub.fail_next = max(0, stub.fail_next - 1)
                    release = stub._release
                if stub.mode == "hang":
                    release.wait(timeout=60)
                    self.close_connection = True
                    return
                if failing:
                    error = StubError(500, "EngineCore encountered an issue", "InternalServerError")
                    self._json(500, error.body())
                    return
                try:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        if path == "/v1/chat/completions":
                            stub.chat(body, self, release)
                        elif path == "/v1/completions":
                            self._json(200, stub.completions(body))
                        else:
                            self._json(404, {"detail": "Not Found"})
                except StubError as exc:
                    self._json(exc.status, exc.body())

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            # Server-sent events: data lines, and keep-alive comments from a thread of their own
            # while the stream is idle (vLLM's `with_sse_keep_alive`).

            def start_events(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream; charset=utf-8")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                self._sse_lock = threading.Lock()
                self._sse_done = threading.Event()
                self._last_write = time.monotonic()
                if stub.keep_alive_s > 0:
                    threading.Thread(target=self._keep_alive, daemon=True).start()

            def _keep_alive(self) -> None:
                interval = stub.keep_alive_s
                while not self._sse_done.wait(interval / 4):
                    with self._sse_lock:
                        if time.monotonic() - self._last_write < interval:
                            continue
                        try:
                            self._send_bytes(KEEP_ALIVE)
                        except OSError:
                            return
                        stub.keep_alives_sent += 1

            def _send_bytes(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()
                self._last_write = time.monotonic()

            def event(self, payload: dict[str, Any] | str) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                with self._sse_lock:
                    self._send_bytes(f"data: {data}\n\n".encode())

            def end_events(self) -> None:
                self._sse_done.set()

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
    def _until_exit(self, mode: str) -> Iterator[None]:
        with self._state_lock:
            self._release = threading.Event()
            self.mode = mode
        try:
            yield
        finally:
            self.mode = "ok"
            self._release.set()

    def hanging(self) -> contextlib.AbstractContextManager[None]:
        """Requests sent meanwhile get no answer at all (until the block ends)."""
        return self._until_exit("hang")

    def stalling(self) -> contextlib.AbstractContextManager[None]:
        """Streams started meanwhile send their first chunk, then nothing but keep-alive
        comments (when `keep_alive_s` is set) until the block ends."""
        return self._until_exit("stall")

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for seen, body in self.requests if seen == path]

    # ---------------------------------------------------------------- endpoints

    def models(self) -> dict[str, Any]:
        created = int(time.time())

        def card(model_id: str, root: str, parent: str | None, length: int | None) -> Any:
            permission = {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
            return {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": parent,
                "max_model_len": length,
                "permission": [permission],
            }

        return {
            "object": "list",
            "data": [
                card(self.base_model, self.base_model, None, self.max_model_len),
                card(self.adapter_model, "/adapters/uncertainty", self.base_model, None),
            ],
        }

    def _adapter(self, body: dict[str, Any]) -> bool:
        model = body.get("model")
        if model == self.base_model:
            return False
        if model == self.adapter_model:
            return True
        raise StubError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {self.base_model}.",
            "NotFoundError",
            "model",
        )

    def _budget(self, prompt_tokens: int, requested: int | None, param: str) -> int:
        """What vLLM 0.33 lets a request generate (`TokenizeParams`, `get_max_tokens`,
        `SamplingParams`), or its 400."""
        limit = self.max_model_len
        if requested is not None and requested > limit:
            raise StubError(
                400,
                f"{param}={requested} cannot be greater than max_model_len={limit}. "
                "Please request fewer output tokens.",
                param=param,
            )
        if prompt_tokens > limit:
            raise StubError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt "
                f"contains {prompt_tokens} input tokens, which exceeds this limit even without "
                "any output tokens. Please reduce the length of the input prompt.",
                param="input_tokens",
            )
        budget = limit - prompt_tokens
        if requested is not None:
            budget = min(budget, requested)
        if budget < 1:
            message = f"max_tokens must be at least 1, got {budget}."
            raise StubError(400, message, param="max_tokens")
        return budget

    def _sampling(self, body: dict[str, Any], max_tokens: int) -> SamplingParams:
        stop = body.get("stop") or ()
        temperature = body.get("temperature")
        top_p = body.get("top_p")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if temperature is None else float(temperature),
            top_p=1.0 if top_p is None else float(top_p),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            seed=body.get("seed"),
        )

    @staticmethod
    def _documents(body: dict[str, Any]) -> list[dict[str, str]]:
        documents = body.get("documents")
        if documents is None:
            return []
        if not isinstance(documents, list):
            raise _validation_error(
                ("body", "documents"), "Input should be a valid list", "list_type", documents
            )
        for index, document in enumerate(documents):
            if not isinstance(document, dict):
                raise _validation_error(
                    ("body", "documents", index),
                    "Input should be a valid dictionary",
                    "dict_type",
                    document,
                )
            for key, value in document.items():
                if not isinstance(value, str):
                    raise _validation_error(
                        ("body", "documents", index, key),
                        "Input should be a valid string",
                        "string_type",
                        value,
                    )
        return documents

    def chat(self, body: dict[str, Any], handler: Any, release: threading.Event) -> None:
        adapter = self._adapter(body)
        documents = self._documents(body)
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        prompt = self.engine.render(messages, documents)
        if body.get("max_completion_tokens") is not None:
            requested, param = body["max_completion_tokens"], "max_completion_tokens"
        else:
            requested, param = body.get("max_tokens"), "max_tokens"
        sampling = self._sampling(body, self._budget(len(prompt), requested, param))
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body["model"],
        }
        if not body.get("stream"):
            with self._model_lock:
                generation = self.engine.decode([DecodeRow(prompt, sampling, adapter=adapter)])[0]
            message = {
                "role": "assistant",
                "content": generation.text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            }
            handler._json(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": generation.finish_reason,
                            "stop_reason": None,
                            "token_ids": None,
                        }
                    ],
                    "service_tier": None,
                    "system_fingerprint": None,
                    "usage": _usage(generation.prompt_tokens, generation.completion_tokens),
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "kv_transfer_params": None,
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
        try:
            handler.event(chunk({"role": "assistant", "content": ""}))
            if self.mode == "stall":
                release.wait(timeout=60)
                return
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
        finally:
            handler.end_events()

    def _prompt(self, body: dict[str, Any]) -> list[int]:
        raw = body.get("prompt")
        if isinstance(raw, str) and raw:
            special = body.get("add_special_tokens", True)
            return list(self.engine.tokenizer.encode(raw, add_special_tokens=special))
        if isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            for token in (min(raw), max(raw)):
                if token < 0 or token > self.max_token_id:
                    raise StubError(400, f"Token id {token} is out of vocabulary")
            return list(raw)
        raise StubError(
            400, "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt"
        )

    def _logprob_ids(self, body: dict[str, Any]) -> list[int] | None:
        ids = body.get("logprob_token_ids")
        if not ids or self.digit_ids == "ignored":
            return None
        if self.digit_ids == "refused":
            raise _validation_error(
                ("body", "logprob_token_ids"),
                "Extra inputs are not permitted",
                "extra_forbidden",
                ids,
            )
        if body.get("logprobs") is None:
            raise StubError(
                400,
                "when using `logprob_token_ids`, `logprobs` must be set.",
                param="logprob_token_ids",
            )
        if len(ids) > MAX_LOGPROB_TOKEN_IDS:
            raise StubError(
                400,
                f"Requested logprob_token_ids of length {len(ids)}, which is greater than max "
                f"allowed: {MAX_LOGPROB_TOKEN_IDS}",
                param="logprob_token_ids",
            )
        outside = [i for i in ids if not 0 <= i <= self.max_token_id]
        if outside:
            raise StubError(
                400,
                f"token_id(s) {outside} in logprob_token_ids contain out-of-vocab token ids. "
                f"Vocabulary size: {self.max_token_id + 1}",
                param="logprob_token_ids",
            )
        return [int(i) for i in ids]

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        adapter = self._adapter(body)
        prompt = self._prompt(body)
        requested = body.get("max_tokens")
        sampling = self._sampling(
            body, self._budget(len(prompt), 16 if requested is None else requested, "max_tokens")
        )
        logprobs = body.get("logprobs")
        explicit = self._logprob_ids(body)
        if logprobs is not None and explicit is None and logprobs > self.max_logprobs:
            raise StubError(
                400,
                f"Requested sample logprobs of {logprobs}, which is greater than max allowed: "
                f"{self.max_logprobs}",
                param="logprobs",
            )
        as_ids = body.get("return_tokens_as_token_ids")
        as_ids = self.return_tokens_as_token_ids if as_ids is None else bool(as_ids)
        finish: str
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
                    prompt, sampling, adapter, int(logprobs), explicit, as_ids
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
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": _usage(len(prompt), generated),
        }

    @torch.inference_mode()
    def _with_logprobs(
        self,
        prompt: list[int],
        sampling: SamplingParams,
        adapter: bool,
        top: int,
        explicit: list[int] | None,
        as_ids: bool,
    ) -> tuple[str, str, int, dict[str, Any]]:
        """A plain decoding loop (whole prefix each step: the miniature is tiny) with logprobs."""
        engine = self.engine
        generator = torch.Generator().manual_seed(sampling.seed or 0)

        def spelled(token: int) -> str:
            return f"token_id:{token}" if as_ids else engine.tokenizer.decode([token])

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
                # The sampled token first, then the requested ids or the most likely ones.
                shown = [token]
                if explicit is not None:
                    shown += explicit
                else:
                    shown += [int(i) for i in torch.topk(logprobs, top).indices.tolist()]
                alternatives: dict[str, float] = {}
                for candidate in shown:
                    alternatives[spelled(candidate)] = max(float(logprobs[candidate]), -9999.0)
                offsets.append(len(text))
                tokens.append(spelled(token))
                token_logprobs.append(max(float(logprobs[token]), -9999.0))
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
