"""Tracing in one process: the spans of ingest and delivery, linked by event id.

The API and the worker run here with an in-memory exporter, against the test Redis
and a fake ConveYour that takes batches; the spans they made are read back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from relay.api import create_app
from relay.otel import OtelTracing
from relay.settings import Settings
from relay.tracing import Tracing, start_tracing, tracing_wanted
from relay.worker import Worker
from tests.conftest import AppClient
from tests.fakes import CONVEYOUR_TOKEN, FakeConveyour

#: A caller's own trace, sent as the traceparent of one request.
_CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
_CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exported() -> Iterator[tuple[OtelTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OtelTracing(provider), exporter
    provider.shutdown()


def _attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(name)


def _ids(span: ReadableSpan) -> list[str]:
    value = _attr(span, "relay.event_id")
    return [value] if isinstance(value, str) else list(value)


async def test_ingest_and_delivery_spans_are_linked_by_event_id(
    make_settings: Callable[..., Settings],
    make_key: Callable[..., Any],
    redis: Redis,
    aiohttp_client: AppClient,
    exported: tuple[OtelTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    async with FakeConveyour() as fake:
        settings = make_settings(
            f"""
[destinations.conveyour]
type = "conveyour"
base_url = "{fake.url}"
token = "{CONVEYOUR_TOKEN}"
events = ["lead"]
batch_size = 10
"""
        )
        key = await make_key("write:leads")
        client = await aiohttp_client(create_app(settings, redis=redis, tracing=tracing))
        auth = {"Authorization": f"Bearer {key}"}
        requests: list[tuple[list[str], dict[str, str]]] = []
        for body, extra in (
            ({"email": "ada@example.com"}, {}),
            (
                {"email": "bo@example.com"},
                {"traceparent": f"00-{_CALLER_TRACE}-{_CALLER_SPAN}-01"},
            ),
            ([{"email": "cy@example.com"}, {"email": "di@example.com"}, {"bad": 1}], {}),
        ):
            resp = await client.post("/v1/leads", json=body, headers={**auth, **extra})
            doc = await resp.json()
            assert resp.status in (202, 207), doc
            ids = [a["id"] for a in doc["accepted"]] if "accepted" in doc else [doc["id"]]
            requests.append((ids, extra))
        await client.get("/healthz")  # a probe: no span
        await asyncio.wait_for(Worker(settings, redis=redis, tracing=tracing).run(drain=True), 30)
    assert len(fake.contacts) == 4

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    assert {s.name for s in spans} == {
        "POST /v1/leads",
        "relay.enqueue",
        "relay.deliver",
        "relay.take",
        "POST",
        "relay.settle",
    }
    servers = [s for s in spans if s.name == "POST /v1/leads"]
    assert len(servers) == 3
    ingest_span_of: dict[str, ReadableSpan] = {}
    for (ids, extra), server in zip(requests, servers, strict=True):
        assert server.kind is SpanKind.SERVER
        assert _attr(server, "http.route") == "/v1/leads"
        assert _attr(server, "http.response.status_code") == (207 if len(ids) > 1 else 202)
        assert _ids(server) == ids
        assert server.context is not None
        if extra:  # the caller's traceparent is the parent
            assert server.parent is not None
            assert format(server.parent.span_id, "016x") == _CALLER_SPAN
            assert format(server.context.trace_id, "032x") == _CALLER_TRACE
        else:
            assert server.parent is None
        (enqueue,) = [s for s in spans if s.name == "relay.enqueue" and s.parent == server.context]
        assert enqueue.kind is SpanKind.PRODUCER
        assert _ids(enqueue) == ids
        assert _attr(enqueue, "relay.destination") == ("conveyour",)
        ingest_span_of.update(dict.fromkeys(ids, server))

    delivers = [s for s in spans if s.name == "relay.deliver"]
    assert any(len(d.links) > 1 for d in delivers), "no batch: one link per event untested"
    linked: dict[str, ReadableSpan] = {}
    for deliver in delivers:
        assert deliver.kind is SpanKind.CONSUMER
        assert deliver.parent is None  # its own trace: it may run hours after the ingest
        assert _attr(deliver, "relay.destination") == "conveyour"
        assert _attr(deliver, "http.response.status_code") == 200
        ids = _ids(deliver)
        outcomes = _attr(deliver, "relay.outcome")
        assert (list(outcomes) if len(ids) > 1 else [outcomes]) == ["delivered"] * len(ids)
        # One link per event of the request (a batch: N), to the span that accepted it.
        link_ids = [str((link.attributes or {})["relay.event_id"]) for link in deliver.links]
        assert sorted(link_ids) == sorted(ids)
        for event_id, link in zip(link_ids, deliver.links, strict=True):
            # (the deliver span itself when the link leads nowhere: never equal below)
            linked[event_id] = by_id.get(link.context.span_id, deliver)
        children = [s for s in spans if s.parent is not None and s.parent == deliver.context]
        assert [c.name for c in sorted(children, key=lambda s: s.start_time or 0)] == [
            "relay.take",
            "POST",
            "relay.settle",
        ]
        for child in children:
            assert _ids(child) == ids
        (upstream,) = [c for c in children if c.name == "POST"]
        assert upstream.kind is SpanKind.CLIENT
        assert _attr(upstream, "http.response.status_code") == 200
        assert _attr(upstream, "server.address") == "127.0.0.1"
    assert linked == ingest_span_of  # every event's delivery links to its ingest span

    # Nothing secret or personal in any span: not the token, the key, an email, a path.
    for span in spans:
        text = repr(dict(span.attributes or {})) + repr(
            [dict(e.attributes or {}) for e in span.events]
        )
        for secret in (CONVEYOUR_TOKEN, key, key[12:], "example.com", "identify"):
            assert secret not in text, (span.name, text)
        assert _ids(span), f"{span.name} names no event"


def test_the_otel_variables_decide() -> None:
    assert tracing_wanted({}) is None
    assert tracing_wanted({"OTEL_SERVICE_NAME": "x"}) is None  # names, exports nothing
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing_wanted(endpoint) == "OTEL_EXPORTER_OTLP_ENDPOINT"
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"}) == "OTEL_TRACES_EXPORTER"
    assert tracing_wanted({**endpoint, "OTEL_SDK_DISABLED": "True"}) is None
    assert tracing_wanted({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None


def test_no_otel_variables_no_tracing() -> None:
    off = start_tracing(service="relay", environ={})
    assert type(off) is Tracing
    assert not off.enabled
    assert off.trace_configs() == []
    assert off.traceparent() is None
    assert repr(off) == "<Tracing off>"


def test_tracing_on_names_the_service(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="relay")
    on = start_tracing(service="relay-worker", environ={"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert isinstance(on, OtelTracing)
        assert repr(on) == "<Tracing on service='relay-worker'>"
        assert "tracing on: <Tracing on service='relay-worker'>, exporting with console" in (
            caplog.text
        )
    finally:
        on.shutdown()
