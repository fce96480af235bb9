"""Tracing in the real command: OTLP/HTTP export to a collector, and no tracing at all
when the extra is not installed or no OTEL_* variable asks for it."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any, Self

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from redis.asyncio import Redis

from tests.fakes import FakeReceiver
from tests.procs import Serve, clean_env, http, relay
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

_WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: ``python -c`` this, then ``serve ...``: relay as if the otel extra were not installed
#: (an import of opentelemetry fails), saying at exit whether relay.otel was imported.
_NOT_INSTALLED = """
import atexit, sys
sys.modules["opentelemetry"] = None
atexit.register(lambda: print("relay.otel imported:", "relay.otel" in sys.modules, flush=True))
from relay.cli import main
sys.exit(main())
"""


def _value(value: AnyValue) -> Any:
    if value.HasField("array_value"):
        return [_value(v) for v in value.array_value.values]
    return getattr(value, value.WhichOneof("value") or "string_value")


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


class FakeCollector:
    """An OTLP/HTTP collector on 127.0.0.1: ``POST /v1/traces``, protobuf, kept decoded."""

    def __init__(self) -> None:
        #: Each span received: its name, its attributes, and its resource's.
        self.spans: list[dict[str, Any]] = []
        self.posts = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "attributes": _attributes(span.attributes),
                            "links": len(span.links),
                            "resource": resource,
                        }
                    )
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _until_logged(serve: Serve, text: str, *, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if text in serve.log():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never logged:\n{serve.log()}")


def _untraced_env(cwd: Path, redis_server: RedisServer, receiver: FakeReceiver) -> dict[str, str]:
    """A relay.toml sending leads to ``receiver``, and an environment with no OTEL_*."""
    (cwd / "relay.toml").write_text(
        f'[destinations.crm]\ntype = "webhook"\nurl = "{receiver.url}/hook"\n'
        'secret = "${CRM_WHSEC}"\n'
    )
    env = {k: v for k, v in clean_env().items() if not k.startswith("OTEL_")}
    env.update(RELAY_REDIS_URL=redis_server.url, CRM_WHSEC=_WHSEC)
    return env


async def _queue_lead(serve: Serve, cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    """A key made with ``relay keys create`` and a lead sent with it: the key, the event id."""
    created = await asyncio.to_thread(
        relay, "keys", "create", "--name", "t", "--scope", "write:leads", "--json", cwd=cwd, env=env
    )
    key = json.loads(created.stdout)["key"]
    status, raw = await asyncio.to_thread(
        http,
        "POST",
        serve.url("/v1/leads?api_key=" + key),
        body=b'{"email": "ada@example.com"}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 202, raw
    return key, json.loads(raw)["id"]


async def _serve_and_deliver(
    cwd: Path,
    redis_server: RedisServer,
    receiver: FakeReceiver,
    *,
    otel: dict[str, str],
    python: tuple[str, ...] = ("-m", "relay"),
    before_stop: Any = None,
) -> tuple[str, str, str]:
    """``relay serve`` with ``otel`` as its only OTEL_* variables: one lead accepted and
    delivered, then SIGTERM. Its log, the event's id and the API key."""
    env = {**_untraced_env(cwd, redis_server, receiver), **otel}
    serve = await asyncio.to_thread(Serve, cwd=cwd, env=env, python=python)
    try:
        key, event_id = await _queue_lead(serve, cwd, env)
        await _until_logged(serve, f"crm: {event_id} delivered")
        if before_stop is not None:
            before_stop()
    finally:
        await asyncio.to_thread(serve.stop)
    assert len(receiver.requests) == 1
    log = serve.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    return log, event_id, key


async def test_serve_exports_spans_over_otlp_http_flushed_at_sigterm(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    """(``redis``: flushed, so no other test's events go to the receiver.)"""
    async with FakeCollector() as collector, FakeReceiver() as receiver:

        def nothing_yet() -> None:  # the batch waits a minute: only the stop sends it
            assert collector.posts == 0

        log, event_id, key = await _serve_and_deliver(
            tmp_path,
            redis_server,
            receiver,
            otel={
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_BSP_SCHEDULE_DELAY": "60000",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            },
            before_stop=nothing_yet,
        )
    assert "tracing on: <Tracing on service='relay'>, exporting with otlp" in log
    assert collector.posts >= 1
    names = [s["name"] for s in collector.spans]
    assert sorted(names) == sorted(
        ["POST /v1/leads", "relay.enqueue", "relay.deliver", "relay.take", "POST", "relay.settle"]
    )
    for span in collector.spans:
        assert span["attributes"]["relay.event_id"] == event_id, span
        assert span["resource"]["service.name"] == "relay"
        assert span["resource"]["deployment.environment"] == "test"
    (deliver,) = [s for s in collector.spans if s["name"] == "relay.deliver"]
    assert deliver["links"] == 1
    assert deliver["attributes"]["relay.outcome"] == "delivered"
    assert deliver["attributes"]["relay.destination"] == "crm"
    text = repr(collector.spans)
    for secret in (key, key[12:], _WHSEC, _WHSEC.removeprefix("whsec_"), "ada@example.com"):
        assert secret not in text


async def test_serve_without_the_extra_installed_serves_and_delivers_untraced(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    async with FakeCollector() as collector, FakeReceiver() as receiver:
        log, _, _ = await _serve_and_deliver(
            tmp_path,
            redis_server,
            receiver,
            otel={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"},
            python=("-c", _NOT_INSTALLED),
        )
    assert (
        "tracing off: OTEL_EXPORTER_OTLP_ENDPOINT set, but the OpenTelemetry SDK is not "
        "installed (pip install 'relay[otel]')"
    ) in log
    assert "relay.otel imported: False" in log
    assert collector.posts == 0


async def test_serve_with_the_extra_and_no_otel_variable_is_untraced(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    """Installed, nothing asked: no exporter, so none trying localhost:4318 and failing."""
    async with FakeReceiver() as receiver:
        log, _, _ = await _serve_and_deliver(
            tmp_path, redis_server, receiver, otel={"OTEL_SERVICE_NAME": "relay-eu"}
        )
    assert "tracing" not in log.lower(), log
    assert "opentelemetry" not in log.lower(), log


async def test_relay_worker_exports_its_spans_when_it_exits(
    tmp_path: Path, redis_server: RedisServer, redis: Redis
) -> None:
    """The worker traced on its own, the API not (so the event has no traceparent and
    its delivery no link): its spans under its own service name, exported as
    ``relay worker --drain`` exits."""
    async with FakeCollector() as collector, FakeReceiver() as receiver:
        env = _untraced_env(tmp_path, redis_server, receiver)
        serve = await asyncio.to_thread(Serve, cwd=tmp_path, env=env, args=("--no-worker",))
        try:
            _, event_id = await _queue_lead(serve, tmp_path, env)
        finally:
            await asyncio.to_thread(serve.stop)
        traced = {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only the exit sends them
        }
        done = await asyncio.to_thread(
            relay, "worker", "--drain", cwd=tmp_path, env=traced, check=False
        )
    assert done.returncode == 0, done.stderr
    assert "tracing on: <Tracing on service='relay-worker'>" in done.stderr
    assert len(receiver.requests) == 1
    assert sorted(s["name"] for s in collector.spans) == [
        "POST",
        "relay.deliver",
        "relay.settle",
        "relay.take",
    ]
    for span in collector.spans:
        assert span["attributes"]["relay.event_id"] == event_id
        assert span["resource"]["service.name"] == "relay-worker"
        assert span["links"] == 0
