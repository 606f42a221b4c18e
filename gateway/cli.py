"""The `certainty-gateway` command line.

Each command is a function that takes the parsed arguments and returns an exit code; a
`GatewayError` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import GatewayError, InvalidRequest
from gateway.model_options import add_model_options, load_engine

Command = Callable[[argparse.Namespace], int]


def _make_tiny_model(args: argparse.Namespace) -> int:
    from gateway.engine.tiny import make_tiny_model

    out = make_tiny_model(
        Path(args.out_dir), seed=args.seed, teach=args.teach_format, progress=True
    )
    print(f"wrote {out / 'base'} and {out / 'adapter'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from gateway.types import Message

    if not args.answer.strip():
        raise InvalidRequest("the answer is empty: there is nothing to score", param="answer")
    if not args.question.strip():
        raise InvalidRequest("the question is empty", param="question")
    documents = _read_documents(Path(args.documents)) if args.documents else []
    engine = load_engine(args)
    result = engine.score(
        [Message(role="user", content=args.question)], args.answer, documents, mode=args.mode
    )
    print(json.dumps(result.as_dict()))
    return 0


def _read_documents(path: Path) -> list[dict[str, object]]:
    """Documents as a JSON list of objects, or JSON Lines with one object per line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read documents file {path}: {exc.strerror}") from exc
    try:
        parsed = json.loads(text)
        docs = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}: not JSON or JSON Lines: {exc}") from exc
    if not all(isinstance(d, dict) for d in docs):
        raise InvalidRequest(f"{path}: each document must be a JSON object")
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certainty-gateway",
        description="An OpenAI-compatible gateway that rates its local model's certainty.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser(
        "make-tiny-model",
        help="write a miniature Granite model and adapter (random weights) for tests and demos",
    )
    tiny.add_argument("out_dir", metavar="OUT_DIR", help="folder to write; gets base/ and adapter/")
    tiny.add_argument(
        "--seed", type=int, default=0, help="random seed of the weights and tokenizer (default 0)"
    )
    tiny.add_argument(
        "--teach-format",
        action="store_true",
        help='also train the adapter so its reply is {"score": "N"} (about a minute on one '
        "CPU core, longer on a busy machine; a progress bar shows on stderr)",
    )
    tiny.set_defaults(run=_make_tiny_model)

    score = commands.add_parser("score", help="rate one answer to one question; prints JSON")
    score.add_argument("--question", required=True, help="the user's question")
    score.add_argument("--answer", required=True, help="the answer to rate")
    add_model_options(score)
    score.add_argument(
        "--mode",
        choices=["logits", "generate"],
        default=None,
        help="logits: one forward pass, the whole digit distribution; generate: decode the "
        "adapter's reply and parse it (default: the config's model.scoring_mode, logits)",
    )
    score.add_argument("--documents", help="JSON list (or JSON Lines) of documents")
    score.set_defaults(run=_score)

    for register in _extra_commands():
        register(commands)
    return parser


def _extra_commands() -> list[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
]:
    """Commands that live beside the code they drive."""
    from gateway.api.commands import register as register_server
    from gateway.cache.commands import register as register_cache
    from gateway.evaluate.commands import register as register_evaluate

    return [register_server, register_cache, register_evaluate]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries()
    run: Command = args.run
    try:
        return run(args)
    except GatewayError as exc:
        print(f"certainty-gateway: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "peft", "httpx", "LiteLLM", "litellm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
