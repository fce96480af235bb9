"""Tracing, optional: the seam the API and the worker call, and the rule that turns it on.

With the ``otel`` extra installed (``pip install 'relay[otel]'``) and the standard
``OTEL_*`` variables asking for it, :func:`start_tracing` returns
:class:`relay.otel.OtelTracing`, which makes OpenTelemetry spans::

    POST /v1/leads (server)          relay.deliver (consumer) ──links──▶ the ingest span
    └── relay.enqueue (producer)     ├── relay.take                      of each event
                                     ├── POST (client: the upstream request)
                                     └── relay.settle

Otherwise it returns :class:`Tracing`, whose every method does nothing and costs a
call (the API adds no middleware, the worker's sessions no trace config), and
``relay.otel`` (hence ``opentelemetry``) is never imported.

The rule (decided once, when ``relay serve`` or ``relay worker`` starts): tracing is
on when the SDK can be imported, ``OTEL_SDK_DISABLED`` is not ``true``,
``OTEL_TRACES_EXPORTER`` is not ``none``, and at least one of
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER`` is set. The last condition is relay's: the SDK alone would
export to ``localhost:4318`` by default, and an operator who installed the extra but
set nothing would get an export error in the log every few seconds. To export to
that default, say so: ``OTEL_TRACES_EXPORTER=otlp``.

The ``OTEL_*`` variables are the SDK's own: relay reads only these few to decide,
and leaves the rest (endpoint, headers, sampler, batch sizes, resource) to the SDK.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

    from relay.adapters.base import Attempt
    from relay.queue import Result
    from relay.store import NewEvent

__all__ = [
    "DeliverySpan",
    "ServerSpan",
    "Tracing",
    "start_tracing",
    "tracing_wanted",
]

log = logging.getLogger("relay")

#: The variables that, set, ask for traces to be exported somewhere.
_ASKING = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)


class ServerSpan:
    """The span of one API request (here: nothing)."""

    __slots__ = ()

    def answered(self, status: int, *, request_id: str | None) -> None:
        """The request was answered with ``status``."""

    def failed(self, exc: BaseException) -> None:
        """The request ended with an exception aiohttp answers itself (a 500)."""


class DeliverySpan:
    """The span of one delivery request (here: nothing)."""

    __slots__ = ()

    def link(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Link to the ingest span of each event (its stored ``traceparent``)."""

    def settled(self, attempts: Sequence[Attempt], results: Sequence[Result]) -> None:
        """What became of each event: outcome and the upstream's status."""


_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
_NO_SERVER_SPAN = contextlib.nullcontext(ServerSpan())
_NO_DELIVERY_SPAN = contextlib.nullcontext(DeliverySpan())


class Tracing:
    """No tracing: what the API and the worker call, each method doing nothing.

    :class:`relay.otel.OtelTracing` is the same with OpenTelemetry spans behind it.
    """

    __slots__ = ()

    #: False here: the API adds no middleware for it, sessions no trace config.
    enabled = False

    def __repr__(self) -> str:
        return "<Tracing off>"

    def server(
        self, method: str, route: str | None, headers: Mapping[str, str]
    ) -> AbstractContextManager[ServerSpan]:
        """A server span for one API request, child of the ``traceparent`` it carries."""
        return _NO_SERVER_SPAN

    def traceparent(self) -> str | None:
        """The current span's W3C ``traceparent``, to store on the events it accepts."""
        return None

    def enqueue(
        self, events: Sequence[NewEvent], destinations: Sequence[str]
    ) -> AbstractContextManager[None]:
        """The ``relay.enqueue`` span around writing accepted events to Redis."""
        return _NO_SPAN

    def deliver(
        self, destination: str, event_ids: Sequence[str]
    ) -> AbstractContextManager[DeliverySpan]:
        """The ``relay.deliver`` span of one request to a destination."""
        return _NO_DELIVERY_SPAN

    def step(self, name: str) -> AbstractContextManager[None]:
        """A child span of the delivery under way (``relay.take``, ``relay.settle``)."""
        return _NO_SPAN

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For the worker's client sessions: a client span per upstream request."""
        return []

    def shutdown(self) -> None:
        """Export what is left (at a graceful stop) and stop exporting."""


def tracing_wanted(environ: Mapping[str, str]) -> str | None:
    """Why the ``OTEL_*`` variables in ``environ`` ask for traces (None: they do not)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if exporters == {"none"}:
        return None
    asked = [name for name in _ASKING if environ.get(name, "").strip()]
    return ", ".join(asked) or None


def start_tracing(*, service: str, environ: Mapping[str, str] | None = None) -> Tracing:
    """The process's tracing, by the rule above; ``service`` is the default
    ``service.name`` (``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` win).

    Called once per process that serves or delivers (after a fork: the SDK's export
    thread does not survive one)."""
    environ = os.environ if environ is None else environ
    why = tracing_wanted(environ)
    if why is None:
        return Tracing()
    if not _sdk_installed():
        log.warning(
            "tracing off: %s set, but the OpenTelemetry SDK is not installed "
            "(pip install 'relay[otel]')",
            why,
        )
        return Tracing()
    from relay.otel import OtelTracing

    return OtelTracing.start(service=service, environ=environ)


def _sdk_installed() -> bool:
    """The SDK and the OTLP/HTTP exporter can be imported (a module set to None in
    ``sys.modules`` counts as absent, as Python's import does)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except (ImportError, ValueError):
        return False
