"""Logging set up once per process: one JSON object per line for services (`aforo serve`, `run`,
`monitor`), short human lines for the other commands, whose own output stays plain text.

Every line passes through a redaction step that masks the installation's credentials (Kafka
SASL/TLS secrets, URL passwords, the validation-hash secret) wherever they appear, tracebacks
included. librdkafka's log lines arrive through the `aforo.librdkafka` logger (see
sinks.kafka.kafka_config); a line it repeats (a broker that stays unreachable) is shown once per
minute with a count of the repeats in between.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from config import Settings

REPEAT_WINDOW_S = 60.0
_MAX_TRACKED = 1000


class Redacting(logging.Formatter):
    """Formats with `inner`, then masks every known secret in the result."""

    def __init__(self, inner: logging.Formatter, secrets: list[str]):
        super().__init__()
        self._inner = inner
        # a secret also appears JSON-escaped inside a JSON line
        self._secrets = sorted({s for v in secrets if v
                                for s in (v, orjson.dumps(v).decode()[1:-1])}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        for secret in self._secrets:
            line = line.replace(secret, "***")
        return line


class RepeatFilter(logging.Filter):
    """Lets a message through once per window; the next one after the window says how many
    identical lines were held back."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock=time.monotonic):
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (shown at, repeats since)

    def filter(self, record: logging.LogRecord) -> bool:
        message, now = record.getMessage(), self._clock()
        shown_at, repeats = self._seen.get(message, (None, 0))
        if shown_at is not None and now - shown_at < self._window_s:
            self._seen[message] = (shown_at, repeats + 1)
            return False
        if len(self._seen) >= _MAX_TRACKED:
            self._seen.clear()
        self._seen[message] = (now, 0)
        if repeats:
            record.msg, record.args = f"{message} (repeated {repeats} times)", None
        return True


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record arrives, not the stream it was created with
    (a test runner or a daemon may swap it, and a closed one would make every later record fail)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _json_formatter() -> logging.Formatter:
    return OrjsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                           rename_fields={"levelname": "level", "name": "logger"})


def configure(settings: Settings, *, service: bool) -> None:
    """Route every log record (ours, uvicorn's, librdkafka's) to stderr in the configured format:
    AFORO_LOG_FORMAT (json|text; default json for services, text for commands) at
    AFORO_LOG_LEVEL (default INFO for services, WARNING for commands)."""
    fmt = settings.log_format_env or ("json" if service else "text")
    level = settings.log_level or ("INFO" if service else "WARNING")
    inner = _json_formatter() if fmt == "json" else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler = _Stderr()
    handler.setFormatter(Redacting(inner, settings.secrets()))
    handler.aforo = True  # configured again (a command, then the service it starts): replace only ours
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "aforo", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    librdkafka = logging.getLogger("aforo.librdkafka")
    for old in [f for f in librdkafka.filters if isinstance(f, RepeatFilter)]:
        librdkafka.removeFilter(old)
    librdkafka.addFilter(RepeatFilter())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()  # uvicorn's own handlers would print a second copy
        logging.getLogger(name).propagate = True
