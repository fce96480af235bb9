"""Log lines: text or JSON (``RELAY_LOG_FORMAT``), each naming the request and the event
it is about.

The API binds the request's id (``X-Request-ID``) and a delivery binds its destination,
event id and the request the event came in with (:func:`bind`); :class:`ContextFilter`
puts them on every record of any logger, so a line logged deep in a library still says
what it was about. In text they follow the line as ``request_id=…``; in JSON they are
fields, present only where they apply (one line each here, however long)::

    2026-12-01 12:50:18,123 INFO relay.worker: crm: evt_01… delivered (200) in 12 ms
        request_id=req_01…
    {"ts": "2026-12-01T12:50:18.123Z", "level": "INFO", "logger": "relay.worker",
        "msg": "crm: evt_01… delivered (200) in 12 ms", "request_id": "req_01…",
        "event_id": "evt_01…", "destination": "crm", "outcome": "delivered",
        "status": 200, "duration_ms": 12.3}

The access log is written by hand in the same layouts (relay.api.accesslog).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
import time

from pythonjsonlogger.orjson import OrjsonFormatter

__all__ = [
    "CONTEXT",
    "TEXT_FORMAT",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "configure",
    "json_time",
    "second_text",
]

#: The layout of every text line (relay.api.accesslog writes the same by hand).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What each JSON line's standard fields are called.
_RENAMED = {"asctime": "ts", "levelname": "level", "name": "logger", "message": "msg"}

#: What the running request or delivery is about, by record attribute. Set with
#: :func:`bind` in a task of its own (each request and each delivery has one), so it
#: ends with that task.
CONTEXT: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"relay_{name}", default=None)
    for name in ("request_id", "event_id", "destination")
}


def bind(**values: str | None) -> None:
    """Make every line logged from now on in this task (and tasks it starts) carry these
    (``request_id``, ``event_id``, ``destination``)."""
    for name, value in values.items():
        CONTEXT[name].set(value)


class ContextFilter(logging.Filter):
    """Puts the bound request and event on each record (``extra=`` given to the call wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in CONTEXT.items():
            if getattr(record, name, None) is None and (value := var.get()) is not None:
                setattr(record, name, value)
        return True


@functools.lru_cache(maxsize=4)
def second_text(second: int, *, json: bool) -> str:
    """A log line's time to the second: local in text, UTC in JSON (then ``.mmmZ``)."""
    if json:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def json_time(created: float) -> str:
    """``2026-12-01T12:50:18.123Z``: ISO 8601, UTC, to the millisecond."""
    second = int(created)
    return f"{second_text(second, json=True)}.{int((created - second) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, then `` request_id=…`` when the line has one (before any traceback)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own layout (``2026-12-01 12:50:18,123``), its second written once."""
        return f"{second_text(int(record.created), json=False)},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id else line


class JsonFormatter(OrjsonFormatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, then the fields the
    line has (``request_id``, ``event_id``, ``destination``, ``status``, ``duration_ms``,
    whatever else ``extra=`` gave; ``exc_info`` with a traceback)."""

    def __init__(self) -> None:
        super().__init__(" ".join(f"%({name})s" for name in _RENAMED), rename_fields=_RENAMED)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return json_time(record.created)


def configure(*, level: str, log_format: str) -> None:
    """Every log line of the process to stderr in ``log_format`` (``text`` or ``json``),
    from ``level`` up.

    Once per process (``relay serve --workers N`` forks its API processes after this,
    and they keep it). Does nothing when logging was set up already (as in tests).
    """
    if logging.root.handlers:  # set up already (as in tests): that stands
        return
    # No line shows a thread, a process or the caller's file and line: not working them
    # out for every record (the logging docs' "Optimization"), and the text time's
    # second written once, took about a quarter off the worker's line per attempt.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch for the caller's frame
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler])
