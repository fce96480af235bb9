"""The HTTP server's edges, over raw sockets against a real server on 127.0.0.1:
bodies that never arrive, headers that never end, requests aiohttp's parser rejects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from relay import redis_keys
from relay.api import create_app
from relay.api.server import listen, running
from relay.logs import ContextFilter
from relay.settings import Settings

Serve = Callable[..., Awaitable[int]]
_CHANNELS = (redis_keys.KEYS_CHANGED_CHANNEL, redis_keys.HOOKS_CHANGED_CHANNEL)
#: Generous: how long a test waits for an answer the server owes after a short timeout.
_WAIT_S = 10.0


@pytest.fixture
async def serve(redis: Redis, make_settings: Callable[..., Settings]) -> AsyncIterator[Serve]:
    """Serve ``create_app`` the way ``relay serve`` does; returns the port."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(*, keepalive_s: float = 75.0, **overrides: Any) -> int:
            [sockets] = listen("127.0.0.1", 0)
            port: int = sockets[0].getsockname()[1]
            app = create_app(make_settings(**overrides), redis=redis)
            before = dict(await redis.pubsub_numsub(*_CHANNELS))
            await stack.enter_async_context(running(app, sockets, keepalive_s=keepalive_s))
            # Let the app's invalidation listeners subscribe first: one cancelled while it
            # connects can miss its cancellation (relay.invalidation), which slows teardown.
            for _ in range(1000):
                if all(n > before[ch] for ch, n in await redis.pubsub_numsub(*_CHANNELS)):
                    break
                await asyncio.sleep(0.01)
            return port

        yield start


class Answer:
    """One HTTP/1.1 answer read off a raw connection."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}

    def json(self) -> Any:
        size = int(self.headers["content-length"])
        return json.loads(self.body[:size])


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    return await asyncio.wait_for(reader.read(), _WAIT_S)


def _lead_head(key: str, **headers: str) -> bytes:
    lines = ["POST /v1/leads HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    lines += ["Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- 3. bodies that never arrive ------------------------------------------------------


async def test_a_body_shorter_than_its_content_length_is_answered_408_and_closed(
    serve: Serve,
    make_key: Callable[..., Awaitable[str]],
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = await serve(body_timeout_s=0.5)
    key = await make_key("write:leads")
    keys_before = await redis.dbsize()
    reader, writer = await _open(port)
    writer.write(_lead_head(key, **{"Content-Length": "1000"}) + b'{"email": ')  # 10 of 1000
    await writer.drain()
    answer = Answer(await _until_closed(reader))  # EOF: the server closed the connection
    writer.close()
    assert answer.status == 408
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == 408
    assert "0.5 s" in problem["detail"]
    assert problem["errors"] == [{"loc": ["body"], "msg": "incomplete after 0.5 s"}]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await redis.dbsize() == keys_before  # nothing was queued


async def test_a_client_that_hangs_up_mid_body_is_one_quiet_line(
    serve: Serve,
    make_key: Callable[..., Awaitable[str]],
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not Redis trouble (no 503 line), and not a bug (no traceback).
    caplog.set_level(logging.INFO, logger="relay.api")
    port = await serve()
    key = await make_key("write:leads")
    keys_before = await redis.dbsize()
    _, writer = await _open(port)
    writer.write(_lead_head(key, **{"Content-Length": "1000"}) + b'{"email": ')  # 10 of 1000
    await writer.drain()
    await asyncio.sleep(0.3)  # the server (on this loop) is now reading the body
    writer.close()
    said: list[str] = []
    for _ in range(500):
        said = [r.getMessage() for r in caplog.records if r.name == "relay.api"]
        if said:
            break
        await asyncio.sleep(0.01)
    assert said == ["POST /v1/leads: the client hung up mid-body"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert await redis.dbsize() == keys_before  # nothing was queued


async def test_a_chunked_body_that_stalls_is_answered_408_and_closed(
    serve: Serve, make_key: Callable[..., Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    port = await serve(body_timeout_s=0.5)
    key = await make_key("write:leads")
    reader, writer = await _open(port)
    writer.write(_lead_head(key, **{"Transfer-Encoding": "chunked"}) + b'5\r\n{"ema\r\n')
    await writer.drain()
    answer = Answer(await _until_closed(reader))
    writer.close()
    assert answer.status == 408
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_deadline_is_for_the_whole_body_so_a_trickle_is_cut_off_too(
    serve: Serve, make_key: Callable[..., Awaitable[str]]
) -> None:
    port = await serve(body_timeout_s=0.5)
    key = await make_key("write:leads")
    reader, writer = await _open(port)
    writer.write(_lead_head(key, **{"Content-Length": "1000"}))

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while True:  # a byte every 50 ms: never idle, never done
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    try:
        answer = Answer(await _until_closed(reader))
    finally:
        task.cancel()
        writer.close()
    assert answer.status == 408


async def test_a_body_in_time_is_served_and_the_connection_kept(
    serve: Serve, make_key: Callable[..., Awaitable[str]]
) -> None:
    port = await serve(body_timeout_s=0.5)
    key = await make_key("write:leads")
    reader, writer = await _open(port)
    body = b'{"email": "ada@example.com"}'
    for _ in range(2):  # the second request on the same connection, after the deadline
        writer.write(_lead_head(key, **{"Content-Length": str(len(body))}))
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _WAIT_S)
        answer = Answer(head)
        await reader.readexactly(int(answer.headers["content-length"]))
        assert answer.status == 202
        await asyncio.sleep(0.4)
    writer.close()


async def test_a_body_that_cannot_be_decoded_is_a_400_problem_and_closed(
    serve: Serve, make_key: Callable[..., Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    port = await serve()
    key = await make_key("write:leads")
    caplog.handler.addFilter(ContextFilter())  # as relay.logs.configure sets up
    reader, writer = await _open(port)
    sent = {"Content-Length": "5", "Content-Encoding": "gzip", "X-Request-ID": "gz-1"}
    writer.write(_lead_head(key, **sent) + b"abcde")  # not gzip
    await writer.drain()
    answer = Answer(await _until_closed(reader))
    writer.close()
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.headers["x-request-id"] == "gz-1"
    assert answer.json()["errors"] == [
        {"loc": ["body"], "msg": "Can not decode content-encoding: gzip"}
    ]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in loud] == [("WARNING", None)]
    assert loud[0].__dict__["request_id"] == "gz-1"  # the line about the request names it


async def test_headers_that_never_end_are_cut_off_by_the_keepalive_timer(serve: Serve) -> None:
    port = await serve(keepalive_s=0.5)
    reader, writer = await _open(port)
    writer.write(b"POST /v1/leads HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    assert await _until_closed(reader) == b""
    writer.close()


# --- 4. requests aiohttp's HTTP parser rejects ----------------------------------------

_GET = b"GET /v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\n"
MALFORMED = {
    "nul in a header": (_GET + b"X-Note: a\x00b\r\n\r\n", ["header", "X-Note"]),
    "header over 8 KiB": (_GET + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", ["request"]),
    "two content-lengths": (
        b"POST /v1/leads HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        ["header", "Content-Length"],
    ),
    "content-length and transfer-encoding": (
        b"POST /v1/leads HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        ["header", "Transfer-Encoding"],
    ),
    "raw non-ascii in the query": (
        "GET /v1/events?before=evt_01M8442G3M… HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        ["query"],
    ),
    "tls client hello": (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\x00\x02\x13\x01",
        ["method"],
    ),
}


@pytest.mark.parametrize("name", MALFORMED)
async def test_a_request_the_parser_rejects_is_a_problem_and_one_warning_line(
    serve: Serve, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    data, loc = MALFORMED[name]
    port = await serve()
    caplog.set_level(logging.DEBUG)
    reader, writer = await _open(port)
    writer.write(data)
    await writer.drain()
    answer = Answer(await _until_closed(reader))
    writer.close()
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["status"] == 400
    assert problem["detail"].startswith("the request is not valid HTTP/1.1: ")
    assert [e["loc"] for e in problem["errors"]] == [loc]
    # The parser rejected the headers with the rest: the id is relay's, on line and answer.
    assert re.fullmatch(r"req_[0-9A-Z]{26}", answer.headers["x-request-id"])
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in loud] == [("WARNING", None)]
    assert loud[0].__dict__["request_id"] == answer.headers["x-request-id"]
    assert "\n" not in loud[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]  # no traceback at any level


async def test_a_rejected_request_never_echoes_its_bytes(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp quotes the offending line; with a key in it, neither log nor answer may."""
    secret = "rly_live_" + "S" * 32
    port = await serve()
    reader, writer = await _open(port)
    writer.write(_GET + f"Authorization: Bearer {secret}\x00\r\n\r\n".encode())
    await writer.drain()
    raw = await _until_closed(reader)
    writer.close()
    answer = Answer(raw)
    assert answer.status == 400
    assert answer.json()["errors"][0]["loc"] == ["header", "Authorization"]
    assert secret.encode() not in raw
    assert secret not in caplog.text


async def test_a_start_up_that_fails_closes_what_it_had_opened() -> None:
    """(An embedded Redis, for one, is stopped again.)"""
    events: list[str] = []

    async def resource(_app: web.Application) -> AsyncIterator[None]:
        events.append("opened")
        yield
        events.append("closed")

    async def broken(_app: web.Application) -> None:
        raise RuntimeError("start-up failed")

    app = web.Application()
    app.cleanup_ctx.append(resource)
    app.on_startup.append(broken)
    [sockets] = listen("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="start-up failed"):
        async with running(app, sockets):
            pass
    assert events == ["opened", "closed"]
