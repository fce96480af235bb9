"""The access log: the layout of every other log line (text or JSON), written once a loop
turn."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from relay.api.accesslog import AccessLogger
from relay.logs import JsonFormatter, TextFormatter

_LINE = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO aiohttp\.access: POST /v1/leads 202 1\.5ms"
)


@pytest.fixture(autouse=True)
def _restore_level() -> Iterator[None]:
    logger = logging.getLogger("aiohttp.access")
    level = logger.level
    yield
    logger.setLevel(level)


def _logger(level: int, log_format: str = "text") -> AccessLogger:
    logger = logging.getLogger("aiohttp.access")
    logger.setLevel(level)
    return AccessLogger(logger, log_format)


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("aiohttp.access", logging.INFO, "", 0, message, (), None)
    record.__dict__.update(extra)
    return record


async def test_lines_are_written_together_when_the_loop_turns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = _logger(logging.INFO)
    request = make_mocked_request("POST", "/v1/leads?api_key=rly_live_secret")
    for _ in range(3):
        access.log(request, web.Response(status=202), 0.0015)
    assert capsys.readouterr().err == ""  # nothing yet: the loop has not come round
    await asyncio.sleep(0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert all(_LINE.fullmatch(line) for line in lines), lines
    assert "api_key" not in "".join(lines)  # the query string may hold the key


async def test_the_layout_is_the_one_logging_gives_every_other_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    access = _logger(logging.INFO)
    access.log(make_mocked_request("POST", "/v1/leads"), web.Response(status=202), 0.0015)
    await asyncio.sleep(0)
    ours = capsys.readouterr().err.rstrip("\n")
    theirs = TextFormatter().format(_record("POST /v1/leads 202 1.5ms"))
    # Same text once the time is set aside (the two were stamped at different moments).
    assert _LINE.fullmatch(ours)
    assert ours.split(" ", 2)[2] == theirs.split(" ", 2)[2]


async def test_the_request_id_ends_the_text_line_as_it_ends_every_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    response = web.Response(status=401, headers={"X-Request-ID": "zap-1:a.b_c"})
    _logger(logging.INFO).log(make_mocked_request("GET", "/v1/me"), response, 0.0015)
    await asyncio.sleep(0)
    ours = capsys.readouterr().err.rstrip("\n")
    theirs = TextFormatter().format(_record("GET /v1/me 401 1.5ms", request_id="zap-1:a.b_c"))
    assert ours.endswith(" INFO aiohttp.access: GET /v1/me 401 1.5ms request_id=zap-1:a.b_c")
    assert ours.split(" ", 2)[2] == theirs.split(" ", 2)[2]


async def test_a_json_line_has_the_fields_of_every_other_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    response = web.Response(status=202, headers={"X-Request-ID": "req-7"})
    access = _logger(logging.INFO, "json")
    access.log(make_mocked_request("POST", "/v1/leads?api_key=rly_live_x"), response, 0.0015)
    await asyncio.sleep(0)
    out = capsys.readouterr().err
    assert out.count("\n") == 1
    ours = json.loads(out)
    theirs = json.loads(
        JsonFormatter().format(_record("POST /v1/leads 202 1.5ms", request_id="req-7"))
    )
    assert list(ours)[:5] == list(theirs) == ["ts", "level", "logger", "msg", "request_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ours["ts"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", theirs["ts"])
    del ours["ts"], theirs["ts"]
    assert ours == {
        **theirs,
        "method": "POST",
        "path": "/v1/leads",
        "status": 202,
        "duration_ms": 1.5,
    }
    assert "api_key" not in out


def test_below_info_nothing_is_formatted() -> None:
    assert not _logger(logging.WARNING).enabled
    assert _logger(logging.INFO).enabled


async def test_a_busy_turn_is_written_in_whole_lines_of_at_most_pipe_buf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `serve --workers N` share one stderr: a pipe keeps writes of <= 4096 bytes whole.
    writes: list[str] = []

    class Stderr:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stderr", Stderr())
    access = _logger(logging.INFO)
    for _ in range(500):
        access.log(make_mocked_request("POST", "/v1/leads"), web.Response(status=202), 0.0015)
    await asyncio.sleep(0)
    assert len(writes) > 1
    assert all(len(w.encode()) <= 4096 and w.endswith("\n") for w in writes)
    assert sum(w.count("\n") for w in writes) == 500


@pytest.mark.parametrize("created", [1.9999, 5.0005, 1_780_000_000.25, 1_780_000_059.999])
def test_a_text_line_s_time_is_logging_s_own(created: float) -> None:
    """TextFormatter writes each second once (cached), in logging's layout, to the ms."""
    record = logging.LogRecord("relay", logging.INFO, __file__, 1, "hi", None, None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    assert TextFormatter().formatTime(record) == logging.Formatter().formatTime(record)
