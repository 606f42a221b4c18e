"""The remote (vLLM) engine over real HTTP against the vLLM stand-in serving the miniature."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from gateway.certainty import Certainty, Unscored
from gateway.config import EngineSettings, ModelSettings, Settings
from gateway.engine.local import LocalEngine
from gateway.engine.remote import RemoteEngine, RemoteEngineFailed, openai_base_url
from gateway.engine.vllm_protocol import (
    TOP_LOGPROBS,
    certainty_from_completion,
    document_strings,
)
from gateway.errors import ContextLengthExceeded
from gateway.types import ChatRequest, Message, SamplingParams
from tests.engine.vllm_stub import ADAPTER_MODEL, BASE_MODEL, VLLMStub
from tests.fakes import FakeEscalator
from tests.servers import free_port

T = TypeVar("T")

QUESTION = (Message(role="user", content="What is the capital of France?"),)
DOCUMENTS = ({"doc_id": "1", "text": "Paris is the capital of France."},)


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


@pytest.fixture(scope="module")
def server(engine: LocalEngine) -> Iterator[VLLMStub]:
    stub = VLLMStub(engine).start()
    yield stub
    stub.stop()


@pytest.fixture
def vllm(server: VLLMStub, engine: LocalEngine) -> VLLMStub:
    server.mode = "ok"
    server.fail_next = 0
    server.api_key = None
    server.max_model_len = engine.max_context
    server.max_logprobs = 20
    server.return_tokens_as_token_ids = False
    server.keep_alive_s = 0.0
    server.keep_alives_sent = 0
    server.digit_ids = "honoured"
    server.requests.clear()
    return server


def settings_for(url: str, tiny_model_dir: Path, **engine: Any) -> Settings:
    return Settings(
        engine=EngineSettings(
            kind="vllm",
            vllm_base_url=url,
            vllm_base_model=engine.pop("vllm_base_model", BASE_MODEL),
            **engine,
        ),
        model=ModelSettings(
            base=str(tiny_model_dir / "base"),
            adapter=str(tiny_model_dir / "adapter"),
            adapter_subfolder=None,
        ),
    )


@asynccontextmanager
async def connected(url: str, tiny_model_dir: Path, **engine: Any) -> AsyncIterator[RemoteEngine]:
    settings = settings_for(url, tiny_model_dir, **engine)
    remote = RemoteEngine.from_settings(settings.engine, settings.model)
    try:
        yield remote
    finally:
        await remote.close()


# ------------------------------------------------------------------------------------- answers


def test_answer_comes_from_chat_completions_with_the_base_model_name(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    request = ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=12))

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.generate(request)

    assert run(scenario) == engine.generate(request)
    (body,) = vllm.bodies("/v1/chat/completions")
    assert body["model"] == BASE_MODEL
    assert body["max_tokens"] == 12
    assert "stream" not in body


def test_streamed_answer_calls_on_text_with_each_delta(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    request = ChatRequest(
        messages=QUESTION, sampling=SamplingParams(max_tokens=16, temperature=1.0, seed=3)
    )
    pieces: list[str] = []

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.generate(request, on_text=pieces.append)

    streamed = run(scenario)
    assert streamed == engine.generate(request)
    assert len(pieces) > 1
    assert "".join(pieces) == streamed.text
    (body,) = vllm.bodies("/v1/chat/completions")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["seed"] == 3


def test_documents_reach_the_served_chat_template(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    sampling = SamplingParams(max_tokens=12)
    with_documents = ChatRequest(messages=QUESTION, documents=DOCUMENTS, sampling=sampling)

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.generate(with_documents)

    answer = run(scenario)
    assert answer == engine.generate(with_documents)
    assert answer.prompt_tokens > engine.count_prompt_tokens(ChatRequest(messages=QUESTION))
    assert vllm.bodies("/v1/chat/completions")[0]["documents"] == [dict(DOCUMENTS[0])]


def test_documents_with_numbers_go_to_vllm_as_strings(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    numbered = ({"doc_id": 1, "text": "Paris is the capital of France.", "checked": True},)
    as_strings = ({"doc_id": "1", "text": "Paris is the capital of France.", "checked": "true"},)
    sampling = SamplingParams(max_tokens=12)

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.generate(
                ChatRequest(messages=QUESTION, documents=numbered, sampling=sampling)
            )

    answer = run(scenario)  # vLLM answers 400 to a non-string value; the stub does too
    assert vllm.bodies("/v1/chat/completions")[0]["documents"] == [as_strings[0]]
    assert answer == engine.generate(
        ChatRequest(messages=QUESTION, documents=as_strings, sampling=sampling)
    )
    assert document_strings({"a": None, "b": [1, "é"], "c": "x"}) == {
        "a": "null",
        "b": '[1, "é"]',
        "c": "x",
    }


# ------------------------------------------------------------------------------------- scores


def assert_same_distribution(remote: Any, local: Any) -> None:
    assert isinstance(remote, Certainty)
    assert isinstance(local, Certainty)
    assert remote.mode == local.mode == "logits"
    assert remote.score == local.score
    assert remote.distribution is not None
    assert local.distribution is not None
    assert remote.distribution == pytest.approx(local.distribution, abs=1e-5)
    assert remote.expected_confidence == pytest.approx(local.expected_confidence, abs=1e-5)


def test_certainty_is_one_completion_step_asking_for_the_ten_digit_ids(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.score(QUESTION, "Paris.", DOCUMENTS)

    remote_score = run(scenario)
    (body,) = vllm.bodies("/v1/completions")
    assert body["model"] == ADAPTER_MODEL
    assert body["max_tokens"] == 1
    assert body["temperature"] == 0.0
    assert body["logprob_token_ids"] == engine.digit_ids
    assert body["logprobs"] == TOP_LOGPROBS == len(engine.digit_ids)
    assert body["return_tokens_as_token_ids"] is False
    assert body["prompt"] == engine.certainty_prompt(QUESTION, "Paris.", DOCUMENTS) + (
        engine.prefix_ids
    )
    assert_same_distribution(remote_score, engine.score(QUESTION, "Paris.", DOCUMENTS))


def test_remote_and_local_engines_give_the_same_digit_distribution(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    # On the miniature one digit is usually missing from the ten most likely tokens: the case
    # where reading the top ten lost that digit's share.
    cases = [("Paris.", DOCUMENTS), ("Lyon, I think.", ()), ("", ())]

    async def scenario() -> list[Any]:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return [await remote.score(QUESTION, answer, docs) for answer, docs in cases]

    for (answer, docs), remote_score in zip(cases, run(scenario), strict=True):
        assert_same_distribution(remote_score, engine.score(QUESTION, answer, docs))


@pytest.mark.parametrize("server_kind", ["ignored", "refused"])
def test_without_logprob_token_ids_scores_fall_back_to_the_top_digits_and_say_so_once(
    vllm: VLLMStub,
    engine: LocalEngine,
    tiny_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
    server_kind: Any,
) -> None:
    vllm.digit_ids = server_kind

    async def scenario() -> list[Any]:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return [await remote.score(QUESTION, "Paris.") for _ in range(2)]

    with caplog.at_level(logging.WARNING, logger="gateway.engine.remote"):
        scores = run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    said = {"ignored": "ignores logprob_token_ids", "refused": "refuses logprob_token_ids"}
    assert said[server_kind] in warnings[0]
    sent = [("logprob_token_ids" in body) for body in vllm.bodies("/v1/completions")]
    # A refusal costs one more call, once; an ignoring server is asked the same way each time.
    assert sent == ([True, False, False] if server_kind == "refused" else [True, True])
    local = engine.score(QUESTION, "Paris.")
    assert isinstance(local, Certainty)
    assert local.distribution is not None
    assert local.distribution[4] > 1e-4  # the share the fallback loses
    for fallback in scores:
        # IBM's rule: the digits among the top ten, renormalised; '4' is not among them.
        assert isinstance(fallback, Certainty)
        assert fallback.distribution is not None
        assert fallback.distribution[4] == 0.0
        kept = 1.0 - local.distribution[4]
        expected = [0.0 if d == 4 else p / kept for d, p in enumerate(local.distribution)]
        assert fallback.distribution == pytest.approx(expected, abs=1e-5)


def test_scores_survive_a_server_that_spells_tokens_as_ids(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    vllm.return_tokens_as_token_ids = True  # vLLM's --return-tokens-as-token-ids

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.score(QUESTION, "Paris.")

    assert_same_distribution(run(scenario), engine.score(QUESTION, "Paris."))


def test_token_id_keys_are_read_as_the_tokens_they_name(engine: LocalEngine) -> None:
    seven, eight = engine.digit_ids[7], engine.digit_ids[8]
    choice = {
        "text": "7",
        "logprobs": {"top_logprobs": [{f"token_id:{seven}": -0.2, f"token_id:{eight}": -1.8}]},
    }

    def decode(token: int) -> str:
        return str(engine.tokenizer.decode([token]))

    found = certainty_from_completion(choice, decode)
    assert isinstance(found, Certainty)
    assert found.score == 7
    assert certainty_from_completion(choice) == Unscored(reply="7", mode="logits")


def test_generate_mode_scoring_parses_the_adapters_reply(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.score(QUESTION, "Paris.", mode="generate")

    assert run(scenario) == engine.score(QUESTION, "Paris.", mode="generate")
    (body,) = vllm.bodies("/v1/completions")
    assert body["prompt"] == engine.certainty_prompt(QUESTION, "Paris.")
    assert "logprobs" not in body


def test_no_digit_among_the_alternatives_is_unscored() -> None:
    choice = {"text": "I", "logprobs": {"tokens": ["I"], "top_logprobs": [{"I": -0.1, "x": -3}]}}
    assert certainty_from_completion(choice) == Unscored(reply="I", mode="logits")


def test_a_reply_without_logprobs_is_a_server_failure() -> None:
    with pytest.raises(RemoteEngineFailed, match="top_logprobs"):
        certainty_from_completion({"text": "7", "logprobs": None})


# ------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("call", ["answer", "streamed answer", "score"])
def test_a_hanging_server_fails_within_the_timeout(
    vllm: VLLMStub, tiny_model_dir: Path, call: str
) -> None:
    async def scenario() -> float:
        async with connected(vllm.base_url, tiny_model_dir, vllm_timeout_s=0.3) as remote:
            on_text = (lambda _: None) if call == "streamed answer" else None
            waiting: Coroutine[Any, Any, Any] = (
                remote.score(QUESTION, "Paris.")
                if call == "score"
                else remote.generate(ChatRequest(messages=QUESTION), on_text=on_text)
            )
            started = time.perf_counter()
            with pytest.raises(RemoteEngineFailed, match=r"did not answer within 0.3 s"):
                await waiting
            return time.perf_counter() - started

    with vllm.hanging():
        elapsed = run(scenario)
    assert elapsed < 2.0


def test_a_server_error_is_tried_again_once_then_is_a_502(
    vllm: VLLMStub, tiny_model_dir: Path
) -> None:
    vllm.mode = "error"

    async def scenario() -> None:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            with pytest.raises(RemoteEngineFailed, match="HTTP 500") as failed:
                await remote.score(QUESTION, "Paris.")
            assert failed.value.status_code == 502

    run(scenario)
    assert len(vllm.bodies("/v1/completions")) == 2


@pytest.mark.parametrize("streamed", [False, True])
def test_one_failed_attempt_is_tried_again(
    vllm: VLLMStub, tiny_model_dir: Path, streamed: bool
) -> None:
    vllm.fail_next = 1
    pieces: list[str] = []

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            on_text = pieces.append if streamed else None
            return await remote.generate(ChatRequest(messages=QUESTION), on_text=on_text)

    assert run(scenario).text
    assert len(vllm.bodies("/v1/chat/completions")) == 2


def test_an_unreachable_server_is_a_502_that_says_so(tiny_model_dir: Path) -> None:
    async def scenario() -> None:
        url = f"http://127.0.0.1:{free_port()}/v1"
        async with connected(url, tiny_model_dir) as remote:
            with pytest.raises(RemoteEngineFailed, match="could not be reached"):
                await remote.generate(ChatRequest(messages=QUESTION))

    run(scenario)


def test_an_unknown_adapter_name_points_at_the_setting(
    vllm: VLLMStub, tiny_model_dir: Path
) -> None:
    async def scenario() -> list[str]:
        async with connected(
            vllm.base_url, tiny_model_dir, vllm_adapter_model="certainty"
        ) as remote:
            with pytest.raises(RemoteEngineFailed, match="vllm_adapter_model"):
                await remote.score(QUESTION, "Paris.")
            return await remote.probe()

    (problem,) = run(scenario)
    assert "--lora-modules certainty=" in problem


def test_probe_finds_both_models_on_a_correct_server(vllm: VLLMStub, tiny_model_dir: Path) -> None:
    async def scenario() -> list[str]:
        async with connected(vllm.base_url.removesuffix("/v1"), tiny_model_dir) as remote:
            return await remote.probe()

    assert run(scenario) == []


def test_an_answer_is_cut_to_what_the_context_leaves_as_vllm_does(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path
) -> None:
    prompt_tokens = engine.count_prompt_tokens(ChatRequest(messages=QUESTION))
    vllm.max_model_len = prompt_tokens + 2
    request = ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=50))

    async def scenario() -> Any:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            return await remote.generate(request)

    answer = run(scenario)
    assert answer.finish_reason == "length"
    assert answer.completion_tokens == 2
    assert answer == engine.generate(
        ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=2))
    )


@pytest.mark.parametrize(
    ("room", "max_tokens", "param", "message"),
    [
        (0, 8, "messages", "no token is left for the answer"),  # vLLM: max_tokens must be >= 1
        (-1, 8, "messages", "maximum context length"),  # the prompt alone is too long
        (4, 10_000, "max_tokens", "larger than the model's context"),
    ],
)
def test_what_vllm_cannot_fit_is_context_length_exceeded(
    vllm: VLLMStub,
    engine: LocalEngine,
    tiny_model_dir: Path,
    room: int,
    max_tokens: int,
    param: str,
    message: str,
) -> None:
    vllm.max_model_len = engine.count_prompt_tokens(ChatRequest(messages=QUESTION)) + room
    request = ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=max_tokens))

    async def scenario() -> None:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            with pytest.raises(ContextLengthExceeded, match=message) as refused:
                await remote.generate(request)
        assert refused.value.status_code == 400
        assert refused.value.code == "context_length_exceeded"
        assert refused.value.param == param

    run(scenario)


def test_keep_alive_comments_do_not_keep_a_stalled_stream_alive(
    vllm: VLLMStub, tiny_model_dir: Path
) -> None:
    vllm.keep_alive_s = 0.05  # vLLM's --sse-keep-alive-interval, far below the deadline

    async def scenario() -> float:
        async with connected(vllm.base_url, tiny_model_dir, vllm_timeout_s=0.5) as remote:
            started = time.perf_counter()
            with pytest.raises(RemoteEngineFailed, match=r"did not answer within 0.5 s"):
                await remote.generate(ChatRequest(messages=QUESTION), on_text=lambda _: None)
            return time.perf_counter() - started

    with vllm.stalling():
        elapsed = run(scenario)
    assert vllm.keep_alives_sent >= 3
    assert elapsed < 3.0


def test_the_base_url_may_be_given_with_or_without_v1() -> None:
    assert openai_base_url("http://vllm:8000") == "http://vllm:8000/v1"
    assert openai_base_url("http://vllm:8000/v1/") == "http://vllm:8000/v1"
    assert openai_base_url("https://lb.example/models/v1") == "https://lb.example/models/v1"


# ------------------------------------------------------------------------------ the stand-in


def test_the_stand_in_refuses_what_vllm_refuses(vllm: VLLMStub, engine: LocalEngine) -> None:
    vllm.api_key = "vllm-secret"
    headers = {"authorization": "Bearer vllm-secret"}
    prompt = engine.certainty_prompt(QUESTION, "Paris.")
    with httpx.Client(base_url=vllm.base_url, headers=headers, timeout=30) as client:
        assert httpx.get(vllm.base_url.removesuffix("/v1") + "/health").status_code == 200
        assert httpx.get(vllm.base_url + "/models").status_code == 401
        cards = client.get("/models").json()["data"]
        assert [(c["id"], c["parent"], c["max_model_len"]) for c in cards] == [
            (BASE_MODEL, None, vllm.max_model_len),
            (ADAPTER_MODEL, BASE_MODEL, None),
        ]

        def refusal(path: str, body: dict[str, Any]) -> tuple[Any, str]:
            reply = client.post(path, json=body)
            assert reply.status_code == 400, reply.text
            return reply.json()["error"]["param"], reply.json()["error"]["message"]

        chat = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        documents = [{"doc_id": 1, "text": "x"}]
        assert refusal("/chat/completions", {**chat, "documents": documents})[0] == (
            "body.documents.0.doc_id"
        )
        step = {"model": ADAPTER_MODEL, "prompt": prompt, "max_tokens": 1}
        assert refusal("/completions", {**step, "logprobs": 21})[0] == "logprobs"
        assert refusal("/completions", {**step, "logprob_token_ids": [1]})[0] == (
            "logprob_token_ids"
        )
        vocabulary = vllm.max_token_id + 1
        assert "out of vocabulary" in refusal("/completions", {**step, "prompt": [vocabulary]})[1]
        message = client.post("/chat/completions", json={**chat, "max_tokens": 2}).json()
        assert "reasoning" in message["choices"][0]["message"]
        assert "reasoning_content" not in message["choices"][0]["message"]


# ------------------------------------------------------------------------------------- gateway


@contextmanager
def gateway_on(
    vllm: VLLMStub, tiny_model_dir: Path, policies: Path, timeout_s: float, **engine: Any
) -> Iterator[TestClient]:
    (policies / "granite.yaml").write_text("name: granite\nreturn_at: 0.0\n")
    settings = settings_for(vllm.base_url, tiny_model_dir, vllm_timeout_s=timeout_s, **engine)
    settings = settings.model_copy(update={"policies_dir": policies})
    app = create_app(settings, escalator=FakeEscalator(targets=()), watch_policies=False)
    with TestClient(app) as client:
        yield client


def test_the_gateway_answers_through_vllm_when_the_engine_kind_is_vllm(
    vllm: VLLMStub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with gateway_on(vllm, tiny_model_dir, tmp_path, timeout_s=30) as gateway:
        reply = gateway.post(
            "/v1/chat/completions",
            json={
                "model": "granite",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Hello?"}],
            },
        )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["certainty"]["served_by"] == BASE_MODEL
    assert len(body["certainty"]["distribution"]) == 10
    assert [path for path, _ in vllm.requests] == ["/v1/chat/completions", "/v1/completions"]


def test_the_gateway_sends_documents_with_numbers_as_strings(
    vllm: VLLMStub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    documents = [{"doc_id": 1, "title": "France", "text": "Paris is the capital of France."}]
    with gateway_on(vllm, tiny_model_dir, tmp_path, timeout_s=30) as gateway:
        reply = gateway.post(
            "/v1/chat/completions",
            json={
                "model": "granite",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "documents": documents,
            },
        )
    assert reply.status_code == 200, reply.text
    (body,) = vllm.bodies("/v1/chat/completions")
    assert body["documents"] == [{**documents[0], "doc_id": "1"}]


def test_a_prompt_that_fills_the_context_is_a_400_context_length_exceeded(
    vllm: VLLMStub, engine: LocalEngine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    hello = ChatRequest(messages=(Message(role="user", content="Hello?"),))
    vllm.max_model_len = engine.count_prompt_tokens(hello)
    with gateway_on(vllm, tiny_model_dir, tmp_path, timeout_s=30) as gateway:
        reply = gateway.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "context_length_exceeded"


def test_the_gateway_answers_502_in_the_envelope_when_vllm_hangs(
    vllm: VLLMStub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with gateway_on(vllm, tiny_model_dir, tmp_path, timeout_s=0.5) as gateway, vllm.hanging():
        reply = gateway.post(
            "/v1/chat/completions",
            json={"model": "granite", "messages": [{"role": "user", "content": "Hello?"}]},
        )
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "engine_unavailable"
    assert "did not answer within 0.5 s" in reply.json()["error"]["message"]


CHAT = {"model": "granite", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello?"}]}


def test_the_api_key_is_sent_to_a_server_that_requires_one(
    vllm: VLLMStub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    vllm.api_key = "vllm-secret"
    with gateway_on(vllm, tiny_model_dir, tmp_path, 30, vllm_api_key="vllm-secret") as gateway:
        assert gateway.get("/health/ready").status_code == 200
        assert gateway.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_without_the_api_key_requests_fail_and_readiness_says_which_setting(
    vllm: VLLMStub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    vllm.api_key = "vllm-secret"
    with gateway_on(vllm, tiny_model_dir, tmp_path, 30) as gateway:
        ready = gateway.get("/health/ready")
        reply = gateway.post("/v1/chat/completions", json=CHAT)
    assert ready.status_code == 503
    assert ready.json()["engine"]["state"] == "unavailable"
    assert "engine.vllm_api_key" in ready.json()["engine"]["reason"]
    assert reply.status_code == 502
    assert "engine.vllm_api_key" in reply.json()["error"]["message"]


def test_readiness_follows_the_model_server(
    vllm: VLLMStub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with gateway_on(vllm, tiny_model_dir, tmp_path, 30) as gateway:
        ready = gateway.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["engine"] == {"state": "ok", "reason": None}
    wrong = {"vllm_adapter_model": "not-served"}
    with gateway_on(vllm, tiny_model_dir, tmp_path, 30, **wrong) as gateway:
        ready = gateway.get("/health/ready")
    assert ready.status_code == 503
    assert "does not serve the adapter 'not-served'" in ready.json()["engine"]["reason"]


def test_readiness_looks_at_the_server_at_most_once_per_interval(
    vllm: VLLMStub, tiny_model_dir: Path
) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        async with connected(vllm.base_url, tiny_model_dir) as remote:
            first = await remote.check(max_age_s=60)
            vllm.api_key = "now-required"  # the server changes; the cached answer stands
            again = await asyncio.gather(*(remote.check(max_age_s=60) for _ in range(5)))
            assert all(answer == first for answer in again)
            return first, await remote.check(max_age_s=0)

    first, fresh = asyncio.run(scenario())
    assert first == []
    assert len(fresh) == 1
    assert "401" in fresh[0]
