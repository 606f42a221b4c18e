"""JSON log lines: one object per line with the request id; no API key, no Authorization header
and no prompt or answer text unless `log_content: true`; the request id on every response."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway import logs
from gateway.api.app import create_app
from gateway.config import Settings
from gateway.engine.local import LocalEngine
from gateway.escalation import EscalationReply
from gateway.logs import JsonFormatter, Redactor, configure_logging, mask_also
from gateway.types import Document, Message, SamplingParams
from tests.fakes import FakeEscalator

KEY = "sk-test-logs-0123456789"
PROMPT = "What is the favourite colour of the Zyxwvut river?"


def record(msg: str = "hello", **extra: Any) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "gateway.test", "levelname": "INFO", "msg": msg, **extra})


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    line = JsonFormatter().format(record("hello %s", args=("world",), policy="guard", n=3))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "hello world"
    assert parsed["level"] == "info"
    assert parsed["logger"] == "gateway.test"
    assert parsed["policy"] == "guard"
    assert parsed["n"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["ts"])
    assert "request_id" not in parsed


def test_the_request_id_exceptions_and_odd_values_are_kept() -> None:
    token = logs.request_id.set("req-1")
    try:
        raise ValueError("broken")
    except ValueError:
        line = JsonFormatter().format(record(exc_info=sys.exc_info(), when=Path("/x")))
    finally:
        logs.request_id.reset(token)
    parsed = json.loads(line)
    assert parsed["request_id"] == "req-1"
    assert "ValueError: broken" in parsed["exc"]
    assert parsed["when"] == "/x"


def test_values_the_fast_encoder_refuses_still_make_a_json_line() -> None:
    line = JsonFormatter().format(record("odd", text="a\ud800b", big=2**70, keyed={1: "x"}))
    parsed = json.loads(line)
    assert parsed["text"] == "a\ud800b"
    assert parsed["big"] == 2**70
    assert parsed["keyed"] == {"1": "x"}


def test_library_markers_are_left_out() -> None:
    parsed = json.loads(JsonFormatter().format(record(litellm_redacted=object())))
    assert "litellm_redacted" not in parsed


def test_known_secrets_and_bearer_tokens_are_masked() -> None:
    redact = Redactor([KEY, "upstream-secret"])
    line = JsonFormatter(redact).format(
        record(
            f"calling with {KEY}",
            header="Authorization: Bearer abc.def-123",
            other="upstream-secret!",
        )
    )
    assert KEY not in line
    assert "abc.def-123" not in line
    assert "upstream-secret" not in line
    parsed = json.loads(line)
    assert parsed["header"] == "Authorization: Bearer ***"
    assert parsed["other"] == "***!"


def test_a_secret_that_json_escapes_is_masked_too() -> None:
    secret = 'sk-"quoted"\\back'
    line = JsonFormatter(Redactor([secret])).format(record("k", value=secret))
    assert json.loads(line)["value"] == "***"


@contextlib.contextmanager
def root_logging() -> Iterator[None]:
    """The root logger's handlers and level, and Python's warnings, put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_configure_logging_installs_one_json_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOG", "")  # restored afterwards, whatever it was
    monkeypatch.delenv("LITELLM_LOG")
    stream = io.StringIO()
    with root_logging():
        configure_logging(fmt="json", secrets=[KEY], stream=stream)
        logging.getLogger("gateway.test").info("key %s", KEY, extra={"policy": "p"})
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library complains", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "key ***"
    assert lines[0]["policy"] == "p"
    assert lines[1]["logger"] == "py.warnings"
    assert os.environ["LITELLM_LOG"] == "CRITICAL"


def test_keys_added_after_start_up_are_masked_too() -> None:
    stream = io.StringIO()
    later = "sk-added-by-a-reload-42"
    with root_logging():
        configure_logging(fmt="json", secrets=[KEY], stream=stream)
        mask_also([later])
        logging.getLogger("gateway.test").info("keys %s %s", KEY, later, extra={"k": later})
    assert later not in stream.getvalue()
    line = json.loads(stream.getvalue())
    assert line["msg"] == "keys *** ***"
    assert line["k"] == "***"


# ------------------------------------------------------------------------- through the app


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of the test, formatted as `serve` formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(Redactor()))  # no known secrets: nothing to hide behind
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def make_client(engine: LocalEngine, policies_dir: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(escalator: Any = None, **settings: Any) -> TestClient:
        config = Settings(policies_dir=policies_dir, auth={"api_keys": [KEY]}, **settings)
        app = create_app(
            config, engine=engine, escalator=escalator or FakeEscalator(), watch_policies=False
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def chat(client: TestClient, model: str = "ask-large", **headers: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {KEY}", **headers},
    )


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_hold_no_key_and_no_prompt_by_default(
    make_client: Callable[..., TestClient], captured: io.StringIO
) -> None:
    client = make_client()
    response = chat(client, **{"x-request-id": "trace-42"})
    assert response.status_code == 200
    assert chat(client, Authorization=f"Basic {KEY}").status_code == 401
    text = captured.getvalue()
    assert KEY not in text
    assert PROMPT not in text
    assert "The large model's answer." not in text
    access = [line for line in lines_of(captured) if line["msg"] == "request"]
    assert [line["status"] for line in access] == [200, 401]
    assert access[0]["request_id"] == "trace-42"
    assert access[0]["key_id"].startswith("key-")
    assert access[0]["policy"] == "ask-large"


def test_access_log_false_leaves_request_lines_at_debug_and_still_counts_requests(
    make_client: Callable[..., TestClient], captured: io.StringIO
) -> None:
    client = make_client(server={"access_log": False})
    assert chat(client).status_code == 200
    assert chat(client, model="no-such-policy").status_code == 404
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/v1/models", headers=headers).status_code == 200  # FastAPI's routes too
    access = [line for line in lines_of(captured) if line["msg"] == "request"]
    assert [line["path"] for line in access] == ["/v1/chat/completions"] * 2 + ["/v1/models"]
    assert {line["level"] for line in access} == {"debug"}  # not at info: not written
    metrics = client.get("/metrics").text
    assert 'gateway_requests_total{policy="ask-large",status="200"} 1.0' in metrics
    assert 'gateway_requests_total{policy="unknown",status="404"} 1.0' in metrics


def test_log_content_true_logs_the_prompt_and_answer_but_never_the_key(
    make_client: Callable[..., TestClient], captured: io.StringIO
) -> None:
    client = make_client(log_content=True)
    assert chat(client).status_code == 200
    text = captured.getvalue()
    assert KEY not in text
    (content,) = [line for line in lines_of(captured) if line["msg"] == "chat content"]
    assert content["messages"] == [{"role": "user", "content": PROMPT}]
    assert content["answer"] == "The large model's answer."


@pytest.mark.parametrize(
    ("incoming", "echoed"),
    [("trace-42", True), ("a" * 129, False), ("has space", False), ("ünï", False)],
)
def test_every_response_carries_a_request_id(
    make_client: Callable[..., TestClient], incoming: str, echoed: bool
) -> None:
    client = make_client()
    headers = {"x-request-id": incoming.encode()}
    for response in (
        client.get("/health/live", headers=headers),
        client.get("/v1/models", headers=headers),  # 401
        client.get("/nowhere", headers=headers),  # 404
        client.post("/v1/chat/completions", content=b"x" * (2 << 20), headers=headers),  # 413
    ):
        rid = response.headers["x-request-id"]
        assert rid == incoming if echoed else re.fullmatch(r"[0-9a-f]{32}", rid)


class BrokenEscalator(FakeEscalator):
    """Fails the way no handler expects."""

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply:
        raise RuntimeError("boom")


def test_an_unexpected_error_is_a_500_envelope_with_the_request_id(
    make_client: Callable[..., TestClient], captured: io.StringIO
) -> None:
    client = make_client(escalator=BrokenEscalator())
    response = chat(client, **{"x-request-id": "trace-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-500"
    assert response.json()["error"]["code"] == "internal"
    assert PROMPT not in response.text
    failures = [line for line in lines_of(captured) if line["msg"] == "unexpected error"]
    assert failures
    assert failures[0]["request_id"] == "trace-500"
