"""The real command in real processes: embedded Redis, AOF, crashes, revocation, secrets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from relay.embedded import EmbeddedRedis, _ping
from tests.fakes import FakeReceiver
from tests.procs import Serve, clean_env, http, relay
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


def _create_key(cwd: Path, env: dict[str, str], *scopes: str) -> dict[str, str]:
    args = ["keys", "create", "--name", "t", "--json"]
    for scope in scopes:
        args += ["--scope", scope]
    created: dict[str, str] = json.loads(relay(*args, cwd=cwd, env=env).stdout)
    return created


def _post_lead(
    serve: Serve, key: str, email: str = "ada@example.com"
) -> tuple[int, dict[str, str]]:
    status, body = http(
        "POST",
        serve.url("/v1/leads"),
        body=json.dumps({"email": email}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    return status, json.loads(body)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh working directory; whatever embedded Redis a test leaves is stopped after it."""
    yield tmp_path
    server = EmbeddedRedis(tmp_path / ".relay")
    if _ping(server.socket_path):
        server.acquire()
        server.release()


def test_cli_alone_starts_and_stops_the_embedded_redis(home: Path) -> None:
    env = clean_env()
    created = _create_key(home, env, "write:leads")
    assert created["key"].startswith("rly_live_")
    assert len(created["key"]) == 41
    assert set(created) == {
        "id",
        "key",
        "prefix",
        "name",
        "scopes",
        "destinations",
        "expires_at",
        "mode",
    }
    assert (home / ".relay" / "appendonly.aof").exists()
    assert not _ping(EmbeddedRedis(home / ".relay").socket_path), "left running"
    listed = json.loads(relay("keys", "list", "--json", cwd=home, env=env).stdout)
    assert [k["id"] for k in listed] == [created["id"]]  # read back from the AOF


def test_serve_and_cli_share_the_server_and_events_survive_a_restart(home: Path) -> None:
    env = clean_env()
    serve = Serve(cwd=home, env=env)
    try:
        created = _create_key(home, env, "write:leads", "read:events")
        # The CLI joined serve's Redis and left it running.
        status, body = _post_lead(serve, created["key"])
        assert status == 202, body
    finally:
        assert serve.stop() == 0, serve.log()
    assert not _ping(EmbeddedRedis(home / ".relay").socket_path), "serve left Redis running"
    shown = relay("events", "show", body["id"], "--json", cwd=home, env=env)
    event = json.loads(shown.stdout)
    assert event["id"] == body["id"]
    assert event["payload"]["email"] == "ada@example.com"


def test_stale_socket_and_crashed_serve_are_handled(home: Path) -> None:
    env = clean_env()
    data = home / ".relay"
    data.mkdir()
    (data / "redis.sock").write_text("left by a crash")
    created = _create_key(home, env, "write:leads")

    serve = Serve(cwd=home, env=env)
    serve.stop(signal.SIGKILL)  # its redis-server stays behind, orphaned
    assert _ping(EmbeddedRedis(data).socket_path)
    listed = json.loads(relay("keys", "list", "--json", cwd=home, env=env).stdout)
    assert [k["id"] for k in listed] == [created["id"]]
    assert not _ping(EmbeddedRedis(data).socket_path), "the last user out stops it"
    again = Serve(cwd=home, env=env)
    try:
        assert _post_lead(again, created["key"])[0] == 202
    finally:
        again.stop()


async def test_revocation_is_seen_at_once_by_another_api_process(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    env = clean_env(RELAY_REDIS_URL=redis_server.url)
    one, two = Serve(cwd=tmp_path, env=env), Serve(cwd=tmp_path, env=env)
    try:
        admin = _create_key(tmp_path, env, "admin")["key"]
        created = _create_key(tmp_path, env, "write:leads")
        for serve in (one, two):  # both processes now hold the key in their caches
            for _ in range(3):
                assert _post_lead(serve, created["key"])[0] == 202
        status, _ = http(
            "DELETE", one.url(f"/v1/keys/{created['id']}"), headers={"X-API-Key": admin}
        )
        assert status == 204
        status, body = _post_lead(two, created["key"])
        assert status == 401, body
        assert "revoked" in body["detail"]
        assert _post_lead(one, created["key"])[0] == 401
    finally:
        one.stop()
        two.stop()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_keys_and_tokens_never_reach_logs_or_redis(
    tmp_path: Path, redis_server: RedisServer, redis: Redis, log_format: str
) -> None:
    tokens = {
        "CY_TOKEN": "cy-secret-token-4242",
        "CV_KEY": "cv-secret-apikey-4343",
        "CRM_WHSEC": "whsec_c2VjcmV0LXdlYmhvb2stNDQ0NA==",
    }
    (tmp_path / "relay.toml").write_text(
        f"""
log_level = "DEBUG"
log_format = "{log_format}"
[destinations.crm]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "${{CRM_WHSEC}}"
[destinations.conveyour]
type = "conveyour"
base_url = "http://127.0.0.1:9"
token = "${{CY_TOKEN}}"
[destinations.convertr]
type = "convertr"
base_url = "http://127.0.0.1:9"
api_key = "${{CV_KEY}}"
campaign_id = 1
form_id = 2
publisher_id = 3
"""
    )
    env = clean_env(RELAY_REDIS_URL=redis_server.url, **tokens)
    serve = Serve(cwd=tmp_path, env=env)
    try:
        created = _create_key(tmp_path, env, "write:leads", "read:events")
        key = created["key"]
        status, body = _post_lead(serve, key)
        assert status == 202
        http(
            "POST",
            serve.url(f"/v1/leads?api_key={key}"),
            body=b"email=bo%40example.com",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        http("GET", serve.url(f"/v1/events/{body['id']}?api_key={key}"))
        http(
            "POST",
            serve.url("/v1/leads"),
            body=b"{bad",
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        http("GET", serve.url("/v1/me"), headers={"Authorization": f"Bearer {key}x"})
        listing = relay("keys", "list", cwd=tmp_path, env=env)
        check = relay("config", "check", cwd=tmp_path, env=env, check=False)  # no upstream here
        # Attempts to the closed port were made and logged (and retried: left pending).
        await _until_logged(serve, f"crm: {body['id']} retry")
    finally:
        serve.stop()
    secrets = [key, key[12:], *tokens.values(), tokens["CRM_WHSEC"].removeprefix("whsec_")]
    if log_format == "json":
        assert all(json.loads(line) for line in serve.log().splitlines())
    outputs = {
        "serve log": serve.log(),
        "keys list": listing.stdout + listing.stderr,
        "config check": check.stdout + check.stderr,
    }
    assert "POST /v1/leads 202" in outputs["serve log"]  # the log is really there
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in the {where}"
    async for name in redis.scan_iter(count=1000):
        kind = await redis.type(name)
        if kind == "hash":
            value = str(await redis.hgetall(name))
        elif kind == "stream":
            value = str(await redis.xrange(name))
        elif kind == "zset":
            value = str(await redis.zrange(name, 0, -1))
        else:
            value = str(await redis.get(name)) if kind == "string" else ""
        for secret in secrets:
            assert secret not in name, f"a secret is in the Redis key name {name}"
            assert secret not in value, f"a secret is in the Redis key {name}"


def test_serve_with_two_api_processes(home: Path) -> None:
    env = clean_env()
    serve = Serve(cwd=home, env=env, args=("--workers", "2"))
    try:
        created = _create_key(home, env, "write:leads")
        for i in range(20):
            assert _post_lead(serve, created["key"], f"u{i}@example.com")[0] == 202
    finally:
        assert serve.stop() == 0, serve.log()
    pids = {
        line.split("(pid ")[1].rstrip(")")
        for line in serve.log().splitlines()
        if "listening on" in line
    }
    assert len(pids) == 2, serve.log()
    assert not _ping(EmbeddedRedis(home / ".relay").socket_path), "left running"


async def test_a_keys_rate_limit_is_shared_by_api_processes(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    env = clean_env(RELAY_REDIS_URL=redis_server.url)
    one, two = Serve(cwd=tmp_path, env=env), Serve(cwd=tmp_path, env=env)
    try:
        created = json.loads(
            relay("keys", "create", "--name", "zap", "--scope", "write:leads",
                  "--rate-limit", "2/m", "--json", cwd=tmp_path, env=env).stdout
        )  # fmt: skip
        assert _post_lead(one, created["key"])[0] == 202
        assert _post_lead(two, created["key"])[0] == 202
        status, body = _post_lead(one, created["key"])
        assert status == 429, body
    finally:
        one.stop()
        two.stop()


async def _until_logged(serve: Serve, text: str, *, timeout_s: float = 20) -> None:
    """Wait (letting this test's loop run: a fake upstream may be in it) until ``text``
    is in the serve's log."""
    for _ in range(int(timeout_s / 0.05)):
        if text in serve.log():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never logged:\n{serve.log()}")


@pytest.mark.parametrize(
    ("log_format", "args"), [("text", ()), ("json", ()), ("json", ("--workers", "2"))]
)
async def test_one_request_s_log_lines_name_it_from_access_to_delivery(
    tmp_path: Path, redis_server: RedisServer, redis: Redis, log_format: str, args: tuple[str, ...]
) -> None:
    """(``redis``: flushed, so no other test's events go to the receiver.)"""
    async with FakeReceiver() as receiver:
        (tmp_path / "relay.toml").write_text(
            f'[destinations.crm]\ntype = "webhook"\nurl = "{receiver.url}/hook"\n'
            'secret = "${CRM_WHSEC}"\n'
        )
        whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        env = clean_env(
            RELAY_REDIS_URL=redis_server.url, RELAY_LOG_FORMAT=log_format, CRM_WHSEC=whsec
        )
        serve = await asyncio.to_thread(Serve, cwd=tmp_path, env=env, args=args)
        try:
            created = await asyncio.to_thread(_create_key, tmp_path, env, "write:leads")
            status, raw = await asyncio.to_thread(
                http,
                "POST",
                serve.url("/v1/leads"),
                body=b'{"email": "ada@example.com"}',
                headers={
                    "X-API-Key": created["key"],
                    "Content-Type": "application/json",
                    "X-Request-ID": "zap-run:42",
                },
            )
            assert status == 202, raw
            event_id = json.loads(raw)["id"]
            await _until_logged(serve, f"crm: {event_id} delivered")
        finally:
            await asyncio.to_thread(serve.stop)
    assert len(receiver.requests) == 1
    log = serve.log()
    for secret in (created["key"], whsec, whsec.removeprefix("whsec_")):
        assert secret not in log
    if log_format == "text":
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
        served = rf"{stamp} INFO aiohttp\.access: POST /v1/leads 202 [0-9.]+ms"
        sent = rf"{stamp} INFO relay\.worker: crm: {event_id} delivered \(200\) in \d+ ms"
        assert re.search(rf"^{served} request_id=zap-run:42$", log, re.M), log
        assert re.search(rf"^{sent} request_id=zap-run:42$", log, re.M), log
        return
    lines = [json.loads(line) for line in log.splitlines()]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    ours = [line for line in lines if line.get("request_id") == "zap-run:42"]
    access = [line for line in ours if line["logger"] == "aiohttp.access"]
    assert len(access) == 1, ours
    assert access[0]["level"] == "INFO"
    assert access[0]["status"] == 202
    assert access[0]["msg"].startswith("POST /v1/leads 202 ")
    assert isinstance(access[0]["duration_ms"], float)
    attempts = [line for line in ours if line["logger"] == "relay.worker"]
    assert len(attempts) == 1, ours
    assert attempts[0]["level"] == "INFO"
    assert {k: attempts[0][k] for k in ("event_id", "destination", "status", "outcome")} == {
        "event_id": event_id,
        "destination": "crm",
        "status": 200,
        "outcome": "delivered",
    }
    assert attempts[0]["duration_ms"] >= 0
    unrelated = [line for line in lines if "request_id" not in line]
    assert all("event_id" not in line for line in unrelated)  # nothing bled across
