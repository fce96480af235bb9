"""OpenTelemetry spans for relay (the ``otel`` extra); imported only when tracing is on.

See :mod:`relay.tracing` for the spans and the rule that turns them on. Every span
carries ``relay.event_id`` (a list when it is about several events), so the trace of
an event is found by its id. An event stores the W3C ``traceparent`` of the request
that accepted it; the ``relay.deliver`` span that sends it, maybe hours later, links
to that span (a link, not a parent: a ConveYour batch links to N requests).

Never in an attribute: headers, the query (``api_key=``), URLs' paths (a hook URL may
be a capability), payloads, upstream answers. Server spans name the route's template
(``/v1/events/{event_id}``), client spans the upstream's scheme, host and port.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from relay.adapters.base import Attempt
from relay.attemptlog import outcome_word
from relay.queue import Result
from relay.store import NewEvent
from relay.tracing import DeliverySpan, ServerSpan, Tracing

__all__ = ["OtelTracing"]

log = logging.getLogger("relay")

#: W3C Trace Context: what an ingest request may carry and what an event stores.
_W3C = TraceContextTextMapPropagator()
#: The delivery under way in this task: its destination and event id attribute, for
#: the spans under it (take, the upstream request, settle).
_DELIVERY: ContextVar[Mapping[str, AttributeValue] | None] = ContextVar(
    "relay_delivery", default=None
)


def _ids(ids: Sequence[str]) -> AttributeValue:
    """``relay.event_id``: the id, or the list of them."""
    return ids[0] if len(ids) == 1 else list(ids)


class _Server(ServerSpan):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def answered(self, status: int, *, request_id: str | None) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if request_id is not None:
            self._span.set_attribute("relay.request_id", request_id)
        if status >= 500:
            self._span.set_status(Status(StatusCode.ERROR))
            self._span.set_attribute("error.type", str(status))

    def failed(self, exc: BaseException) -> None:
        self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self._span.set_attribute("error.type", type(exc).__name__)


class _Delivery(DeliverySpan):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def link(self, events: Sequence[Mapping[str, Any]]) -> None:
        for event in events:
            if not (parent := event.get("traceparent")):
                continue  # accepted with tracing off, or a hook notification
            context = trace.get_current_span(_W3C.extract({"traceparent": parent}))
            found = context.get_span_context()
            if found.is_valid:
                self._span.add_link(found, {"relay.event_id": str(event.get("id"))})

    def settled(self, attempts: Sequence[Attempt], results: Sequence[Result]) -> None:
        outcomes = [outcome_word(a, r) for a, r in zip(attempts, results, strict=True)]
        self._span.set_attribute("relay.outcome", _ids(outcomes))
        statuses = [a.status for a in attempts if a.status is not None]
        if statuses:
            self._span.set_attribute("http.response.status_code", statuses[0])
        if any(o != "delivered" for o in outcomes):
            self._span.set_status(Status(StatusCode.ERROR, ",".join(sorted(set(outcomes)))))


class OtelTracing(Tracing):
    """Spans through an OpenTelemetry ``TracerProvider`` of relay's own (the global
    provider is left alone: tests make one per app)."""

    __slots__ = ("_provider", "_tracer")

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("relay")

    def __repr__(self) -> str:
        name = self._provider.resource.attributes.get(SERVICE_NAME)
        return f"<Tracing on service={name!r}>"

    @classmethod
    def start(cls, *, service: str, environ: Mapping[str, str]) -> OtelTracing:
        """A provider exporting in batches to what ``OTEL_TRACES_EXPORTER`` names
        (``otlp``, the default: OTLP/HTTP, configured by the SDK's own variables;
        ``console``: stdout). The sampler is the SDK's (``OTEL_TRACES_SAMPLER``)."""
        resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service}))
        # Shut down by relay at its graceful stop (serve, worker), not at interpreter exit.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        names = [
            n.strip().lower()
            for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
            if n.strip()
        ]
        for name in dict.fromkeys(names):
            exporter = _exporter(name)
            if exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(exporter))
        tracing = cls(provider)
        log.info("tracing on: %r, exporting with %s", tracing, ", ".join(names))
        return tracing

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes the batch processors first

    @contextlib.contextmanager
    def server(
        self, method: str, route: str | None, headers: Mapping[str, str]
    ) -> Iterator[ServerSpan]:
        attributes: dict[str, AttributeValue] = {"http.request.method": method}
        if route is not None:
            attributes["http.route"] = route
        with self._tracer.start_as_current_span(
            f"{method} {route}" if route else method,
            context=_W3C.extract(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # an HTTPException is an answer; failed() says the rest
            set_status_on_exception=False,
        ) as span:
            yield _Server(span)

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        _W3C.inject(carrier)
        return carrier.get("traceparent")

    @contextlib.contextmanager
    def enqueue(self, events: Sequence[NewEvent], destinations: Sequence[str]) -> Iterator[None]:
        ids = _ids([e.id for e in events])
        trace.get_current_span().set_attribute("relay.event_id", ids)  # the request's span
        attributes = {
            "relay.event_id": ids,
            "relay.event_count": len(events),
            "relay.destination": list(destinations),
        }
        with self._tracer.start_as_current_span(
            "relay.enqueue", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            yield

    @contextlib.contextmanager
    def deliver(self, destination: str, event_ids: Sequence[str]) -> Iterator[DeliverySpan]:
        about: dict[str, AttributeValue] = {
            "relay.destination": destination,
            "relay.event_id": _ids(event_ids),
        }
        with self._tracer.start_as_current_span(
            "relay.deliver",
            kind=SpanKind.CONSUMER,
            attributes={**about, "relay.event_count": len(event_ids)},
        ) as span:
            bound = _DELIVERY.set(about)
            try:
                yield _Delivery(span)
            finally:
                _DELIVERY.reset(bound)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        with self._tracer.start_as_current_span(name, attributes=(_DELIVERY.get() or {})):
            yield

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._request_start)
        config.on_request_end.append(self._request_end)
        config.on_request_exception.append(self._request_exception)
        return [config]

    async def _request_start(
        self, _session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        url = params.url
        attributes: dict[str, AttributeValue] = {
            **(_DELIVERY.get() or {}),
            "http.request.method": params.method,
            "url.scheme": url.scheme,
            "server.address": url.host or "",
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        ctx.span = self._tracer.start_span(
            params.method, kind=SpanKind.CLIENT, attributes=attributes
        )

    async def _request_end(
        self, _session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        span: trace.Span = ctx.span
        status = params.response.status
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))
        span.end()

    async def _request_exception(
        self, _session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        span: trace.Span | None = getattr(ctx, "span", None)
        if span is None:
            return
        # The class only: aiohttp's messages hold the URL, query and all.
        name = type(params.exception).__name__
        span.set_status(Status(StatusCode.ERROR, name))
        span.set_attribute("error.type", name)
        span.end()


def _exporter(name: str) -> SpanExporter | None:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    if name == "console":
        return ConsoleSpanExporter()
    log.warning("tracing: OTEL_TRACES_EXPORTER=%s is not one relay knows (otlp, console)", name)
    return None
