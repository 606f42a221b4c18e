"""Logs as one JSON object per line, each carrying the request id of the request it belongs to.

`configure_logging` installs one handler on the root logger (uvicorn's loggers propagate to it).
A line holds `ts`, `level`, `logger`, `msg`, `request_id` when a request is being handled, the
`extra={...}` fields of the call, and `exc` for a traceback. Known secrets (the API keys, the
escalation credentials) are masked wherever they appear, and so is anything after `Bearer `: a
secret should never reach a log call, this is the second line of defence. Prompt and answer text
is logged only by the routes, only when `log_content: true`.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Literal

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the request the current task works for (set by the request middleware)."""

MASK = "***"
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}  # uvicorn's colored copy
)


class Redactor:
    """Masks known secrets and bearer tokens in a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        self._known: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too (keys that arrive after start-up, by a reload)."""
        # As written and as JSON escapes it (a key may hold `"` or `\`); longest first, so a
        # secret that contains another is masked whole.
        self._forms |= {form for s in secrets if s for form in (s, json.dumps(s)[1:-1])}
        known = sorted(self._forms, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(s) for s in known)) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(MASK, text)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the `extra` fields of the call become keys of their own."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        for key, value in _extra(record):
            if key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        try:
            text = orjson.dumps(line, default=str).decode()
        except TypeError:  # text orjson refuses (a lone surrogate): the slower, lenient encoder
            text = json.dumps(line, ensure_ascii=False, default=str)
        return self.redact(text)


class TextFormatter(logging.Formatter):
    """Plain lines for people at a terminal: the message, then the extra fields as key=value."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = dict(_extra(record))
        rid = request_id.get()
        if rid is not None:
            extra = {"request_id": rid, **extra}
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return self.redact(text)


def mask_also(secrets: Iterable[str]) -> None:
    """Add `secrets` to what the handlers `configure_logging` installed mask."""
    wanted = list(secrets)
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter | TextFormatter):
            formatter.redact.add(wanted)


def configure_logging(
    *,
    fmt: Literal["json", "text"] = "json",
    level: int = logging.INFO,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one writing `fmt` lines to `stream` (stderr)."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Neither formatter writes where a record was made, nor its thread or process: skip finding
    # them (the logging HOWTO's "Optimization"), a third of the cost of each access-log line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.captureWarnings(True)  # Python warnings become records too: every line is JSON
    # LiteLLM prints every record through a text handler of its own, whose level it reads from
    # LITELLM_LOG when imported (later, by the escalator): silence that handler, and let its
    # warnings and errors reach this one instead.
    os.environ.setdefault("LITELLM_LOG", "CRITICAL")
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def _extra(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """The fields a log call passed in `extra` (and not the markers libraries attach)."""
    for key, value in record.__dict__.items():
        if key in _RECORD_FIELDS or key.startswith("_") or type(value) is object:
            continue  # e.g. LiteLLM marks every record with a bare `object()` sentinel
        yield key, value


def _timestamp(created: float) -> str:
    return f"{_second(int(created))}.{int(created % 1 * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """The UTC date and time of a second (lines come in bursts within one)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
