"""`serve --demo`: the gateway on miniature models, offline, with all three actions happening.

The miniature (random weights; its answers and certainties are noise) is built once into a cache
folder. The demo's policies are the shipped `granite`, `cascade` and `guard`, with thresholds set
from the miniature's own certainty on a few sample questions (its tertiles), so that returns,
escalations and withholds all occur. Escalation goes over real HTTP, through LiteLLM, to this same
gateway's `granite` policy. Everything else (config file, `GATEWAY_*` variables: cache URL, API
keys, ...) works as in a real start; only the model, policies and escalation defaults differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

from gateway.config import DEFAULT_BASE, Settings, load_settings

log = logging.getLogger(__name__)

DEMO_VERSION = "1"
SAMPLE_QUESTIONS = (
    "What is the capital of France?",
    "Why is the sky blue?",
    "Name three planets of the solar system.",
    "How do vaccines work?",
    "Who wrote Hamlet?",
    "What is 17 times 3?",
    "Explain photosynthesis in one sentence.",
    "What is the boiling point of water at sea level?",
    "Which ocean is the largest?",
    "What does a CPU do?",
    "When did the Second World War end?",
    "What is the speed of light?",
)
ESCALATION_KEY = "demo-escalation-key"
MODEL_NAME = "granite-4.0-micro-miniature"
"""What `served_by` reports in the demo (unless `model.name` is set)."""
SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEMO_AUDIT = {"sample": 0.5, "judge": "judge", "max_usd_per_hour": 1.0}
"""The demo's calibration audit: half the returned answers, judged by the `granite` policy."""
BANNER = (
    "DEMO MODE: miniature Granite-architecture models with random weights. "
    "Answers and certainties are noise; the request path, policies, cache and escalation are real."
)


def demo_home() -> Path:
    root = os.environ.get("CERTAINTY_GATEWAY_HOME")
    if root:
        return Path(root) / "demo"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "certainty-gateway" / "demo"


def demo_key() -> str:
    """The demo cache's key: the package's version and a hash of what the demo is built from
    (the miniature's builder and chat template, this module, the shipped policies). Another
    version or a checkout with other content builds its own demo; identical ones share it."""
    try:
        version = metadata.version("certainty-gateway")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256(f"demo {DEMO_VERSION}\n".encode())
    engine = resources.files("gateway.engine")
    parts = [
        ("tiny.py", engine.joinpath("tiny.py").read_bytes()),
        ("chat_template.jinja", engine.joinpath("chat_template.jinja").read_bytes()),
        ("demo", Path(__file__).read_bytes()),
    ]
    if SHIPPED_POLICIES.is_dir():
        parts += [
            (f"policies/{p.name}", p.read_bytes()) for p in sorted(SHIPPED_POLICIES.glob("*"))
        ]
    for name, content in parts:
        digest.update(f"{name} {len(content)}\n".encode())
        digest.update(content)
    return f"{version}-{digest.hexdigest()[:16]}"


def demo_folder(home: Path) -> Path:
    """Where this version and content of the demo lives under `home`."""
    return home / demo_key()


def build_demo(home: Path) -> Path:
    """Build the miniature model and the demo policies once; returns the folder."""
    folder = demo_folder(home)
    done = folder / "ready.json"
    if done.is_file():
        found = json.loads(done.read_text())  # the policies may be newer than the model
        _write_policies(folder / "policies", found["escalate_at"], found["return_at"])
        return folder
    from gateway.engine.tiny import make_tiny_model

    log.info("building the demo's miniature model (once)", extra={"folder": str(folder)})
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model"
    built = model / "built"
    if not built.is_file():  # else built by a run that stopped later
        shutil.rmtree(model, ignore_errors=True)
        make_tiny_model(model, seed=0, teach=True, progress=True)
        built.write_text("")
    low, high = _tertiles(model)
    _write_policies(folder / "policies", low, high)
    done.write_text(json.dumps({"return_at": high, "escalate_at": low}) + "\n")
    return folder


def _tertiles(model_dir: Path) -> tuple[float, float]:
    """The miniature's expected confidence on the sample questions: its lower and upper thirds."""
    from gateway.engine.local import LocalEngine, ModelSource
    from gateway.types import ChatRequest, Message, SamplingParams

    engine = LocalEngine.load(
        ModelSource(base=str(model_dir / "base"), adapter=str(model_dir / "adapter")),
        device="cpu",
        dtype="float32",
    )
    values = []
    for question in SAMPLE_QUESTIONS:
        messages = (Message(role="user", content=question),)
        request = ChatRequest(messages=messages, sampling=SamplingParams(max_tokens=32))
        answer = engine.generate(request).text
        result = engine.score(messages, answer)
        values.append(getattr(result, "expected_confidence", 0.0))
    values.sort()
    third = len(values) // 3
    low = (values[third - 1] + values[third]) / 2
    high = (values[2 * third - 1] + values[2 * third]) / 2
    return round(low, 6), round(high, 6)


def _write_policies(folder: Path, low: float, high: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    policies: dict[str, dict[str, Any]] = {
        "granite": {
            "name": "granite",
            "description": "The miniature's answer, always returned, with its certainty.",
            "return_at": 0.0,
        },
        "cascade": {
            "name": "cascade",
            "description": "Demo cascade: thresholds at the miniature's certainty tertiles.",
            "return_at": high,
            "escalate_at": low,
            "escalate_to": "large",
            "on_escalation_error": "return_local",
            "audit": DEMO_AUDIT,
        },
        "guard": {
            "name": "guard",
            "description": "Demo guard: withholds the less certain half of the answers.",
            "return_at": round((low + high) / 2, 6),
            "audit": DEMO_AUDIT,
        },
    }
    for name, body in policies.items():
        note = "# Written by `serve --demo` (thresholds fit the miniature model); see policies/.\n"
        (folder / f"{name}.yaml").write_text(note + yaml.safe_dump(body, sort_keys=False))


def prepare_demo(config: Path | None, *, host: str | None, port: int | None) -> Settings:
    """Settings for the demo: the user's config and variables, with the demo's defaults."""
    settings = load_settings(config)
    folder = build_demo(demo_home())
    port = port if port is not None else settings.server.port
    host = host if host is not None else settings.server.host
    call_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    update: dict[str, Any] = {"demo": True}
    if settings.model.base == DEFAULT_BASE:
        update["model"] = settings.model.model_copy(
            update={
                "name": settings.model.name or MODEL_NAME,
                "base": str(folder / "model" / "base"),
                "adapter": str(folder / "model" / "adapter"),
                "adapter_subfolder": None,
                "device": "cpu",
                "dtype": "float32",
            }
        )
    if settings.policies_dir == Path("policies"):
        update["policies_dir"] = folder / "policies"
    if not settings.escalation.model_list:
        api_key = settings.auth.api_keys[0] if settings.auth.api_keys else ESCALATION_KEY
        to_granite = {
            "model": "openai/granite",
            "api_base": f"http://{call_host}:{port}/v1",
            "api_key": api_key,
        }
        update["escalation"] = settings.escalation.model_copy(
            update={
                "model_list": [
                    {
                        "model_name": "large",
                        "litellm_params": to_granite,
                        # priced as LiteLLM prices gpt-4o, so the dashboard estimates a saving
                        "model_info": {"base_model": "gpt-4o"},
                    },
                    {"model_name": "judge", "litellm_params": dict(to_granite)},
                ],
                "timeout_s": 30.0,
            }
        )
    print(BANNER, flush=True)  # once, plainly, for the person who started it
    print(f"Dashboard: http://{call_host}:{port}/dashboard", flush=True)
    return settings.model_copy(update=update)
