"""The process's logging, configured once: one structured line per record, on stderr.

JSON (msgspec) for the machines that collect logs; logfmt for a person at a terminal
(OPAY_LOG_FORMAT=auto picks it when stderr is a TTY). Every line has `time` (UTC, ms),
`level`, `logger` and `msg`; a line logged while a request is served also carries its
`request_id` (set by opay/http/middleware.py); a record's own fields come from
`extra={"fields": {...}}`; an exception comes with its `traceback`. The same
configuration runs in the front end and in every shard (opay/actors/shard.py), whose
lines also carry `shard`.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import TextIO

import msgspec

# OPAY_LOG_LEVEL's values (opay/settings.py checks them); OPAY_LOG_FORMAT: json, logfmt or auto.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Libraries that narrate their own workings at info: only what goes wrong, and for Ray,
# whose warnings are about itself (token auth, usage stats, object store), only errors.
QUIET = {"ray": logging.ERROR, "uvicorn": logging.WARNING, "httpx": logging.WARNING, "httpcore": logging.WARNING, "asyncio": logging.WARNING}

# The request being served in this task (asyncio copies it into the tasks it starts).
REQUEST_ID: ContextVar[str | None] = ContextVar("opay_request_id", default=None)

_json = msgspec.json.Encoder(enc_hook=str)


def fields_of(record: logging.LogRecord, static: dict[str, object]) -> dict[str, object]:
    fields: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields["request_id"] = request_id
    fields.update(static)
    extra = record.__dict__.get("fields")
    if extra:
        fields.update(extra)
    if record.exc_info:
        fields["traceback"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, object] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        return _json.encode(fields_of(record, self._static)).decode()


class LogfmtFormatter(logging.Formatter):
    """key=value pairs; a value with a space, quote, `=` or anything unprintable is quoted
    with JSON's escapes (a traceback's newlines are `\\n`), so a record stays one line."""

    def __init__(self, static: dict[str, object] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields_of(record, self._static).items() if value is not None)


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return _json.encode(text).decode()


def configure(level: str, fmt: str, static: dict[str, object] | None = None, stream: TextIO | None = None) -> None:
    """Route every logger of the process through one handler on the root logger; `static`
    fields go on every line (a shard's index). Earlier handlers are replaced (Ray's own
    on the `ray` logger included), so calling it again reconfigures rather than doubles."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "logfmt" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(static) if fmt == "logfmt" else JsonFormatter(static))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    for name, floor in QUIET.items():
        quiet = logging.getLogger(name)
        quiet.handlers.clear()
        quiet.propagate = True
        quiet.setLevel(max(floor, LEVELS[level]))
