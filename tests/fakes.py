"""Fake ConveYour and Convertr upstreams: real aiohttp servers on 127.0.0.1.

They answer as UPSTREAMS.md describes, record every request, and can be
scripted to answer the next N requests otherwise (a 429 with Retry-After, a
500, a delay longer than a timeout)::

    async with FakeConvertr() as fake:
        fake.script(status=429, headers={"Retry-After": "2"}, times=1)
        ...  # send to fake.url
        assert fake.requests[0].parsed == {"form[email]": "ada@example.com"}
        assert fake.leads[0]["fields"] == {"email": "ada@example.com"}

Or use the ``fake_conveyour`` / ``fake_convertr`` fixtures below (import them
into a conftest.py to share them).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl

import orjson
import pytest
from aiohttp import web

__all__ = [
    "CONVERTR_API_KEY",
    "CONVEYOUR_APPKEY",
    "CONVEYOUR_TOKEN",
    "FakeConvertr",
    "FakeConveyour",
    "FakeReceiver",
    "Recorded",
    "fake_convertr",
    "fake_conveyour",
]

CONVEYOUR_TOKEN = "cy-token-7f3a9c0e51"
CONVEYOUR_APPKEY = "cy-appkey-2d84b6"
CONVERTR_API_KEY = "cv-apikey-5b2e8d91"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the fake saw it."""

    time: float  #: ``time.time()`` when it arrived
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    #: The JSON document, the form as a dict, or None.
    parsed: Any


#: A scripted body made from the request it answers (e.g. one that echoes a header back).
Echo = Callable[[Recorded], str]


@dataclass(slots=True)
class _Scripted:
    status: int | None
    body: bytes | Echo
    headers: dict[str, str]
    delay_s: float
    times: int = field(default=1)


def _json(status: int, doc: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


class _Fake:
    """A loopback server that records requests and plays scripted answers first."""

    def __init__(self) -> None:
        #: Every request, in arrival order.
        self.requests: list[Recorded] = []
        #: Requests being answered now, and the most there ever were at once.
        self.in_flight = 0
        self.most_at_once = 0
        self._scripts: deque[_Scripted] = deque()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, without trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def script(
        self,
        *,
        status: int | None = None,
        body: bytes | str | dict[str, Any] | list[Any] | Echo = b"",
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests with ``status``/``body``/``headers``.

        A dict or list body is sent as JSON; a callable makes the body from the
        :class:`Recorded` request it answers. ``delay_s`` waits before answering;
        with ``status=None`` the fake then answers normally (a slow upstream).
        Scripts queue up: the first one is used up before the next applies.
        """
        hdrs = dict(headers or {})
        if isinstance(body, dict | list):
            body = orjson.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        raw = body.encode() if isinstance(body, str) else body
        self._scripts.append(_Scripted(status, raw, hdrs, delay_s, times))

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        parsed: Any = None
        if request.content_type == "application/json":
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
        elif request.content_type == "application/x-www-form-urlencoded":
            parsed = dict(parse_qsl(body.decode(), keep_blank_values=True))
        recorded = Recorded(
            time.time(),
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            body,
            parsed,
        )
        self.requests.append(recorded)
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            return await self._answer(request, handler, recorded)
        finally:
            self.in_flight -= 1

    async def _answer(
        self, request: web.Request, handler: Handler, recorded: Recorded
    ) -> web.StreamResponse:
        if self._scripts:
            step = self._scripts[0]
            step.times -= 1
            if step.times <= 0:
                self._scripts.popleft()
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
            if step.status is not None:
                answer = step.body if isinstance(step.body, bytes) else step.body(recorded).encode()
                return web.Response(status=step.status, body=answer, headers=step.headers)
        return await handler(request)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        # handler_cancellation: a slow scripted answer stops when the client gives up,
        # so closing the fake never waits for it.
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class FakeConveyour(_Fake):
    """ConveYour's ``POST /api/analytics/identify``, single and ``{"data": [...]}`` batch,
    and ``POST /api/analytics/track`` (``{"id": <value>, "events": [...]}``)."""

    def __init__(self, *, token: str = CONVEYOUR_TOKEN, appkey: str | None = None) -> None:
        super().__init__()
        self.token = token
        #: When set, ``x-conveyour-appkey`` must match too (an old account).
        self.appkey = appkey
        #: Identify items accepted, in order: ``{"id": ..., "traits": {...}}``.
        self.contacts: list[dict[str, Any]] = []
        #: Track events accepted, in order: ``(contact id, {"event": ..., ...})``.
        self.tracked: list[tuple[str, dict[str, Any]]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/analytics/identify", self._identify)
        app.router.add_post("/api/analytics/track", self._track)

    async def _read(self, request: web.Request) -> Any:
        """The JSON body, or the answer to give instead (403, or 400 for bad JSON)."""
        # A sibling product answers a bad or inactive key with 403 and no body.
        if request.headers.get("x-conveyour-token") != self.token or (
            self.appkey is not None and request.headers.get("x-conveyour-appkey") != self.appkey
        ):
            return web.Response(status=403)
        # ConveYour's error bodies are undocumented: this shape is our guess.
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json(400, {"status": "error", "message": "Invalid JSON"})

    async def _track(self, request: web.Request) -> web.Response:
        doc = await self._read(request)
        if isinstance(doc, web.Response):
            return doc
        ident = doc.get("id") if isinstance(doc, dict) else None
        events = doc.get("events") if isinstance(doc, dict) else None
        if not isinstance(ident, str) or not ident or not isinstance(events, list):
            return _json(400, {"status": "error", "message": "id and events are required"})
        if not all(isinstance(e, dict) and isinstance(e.get("event"), str) for e in events):
            return _json(400, {"status": "error", "message": "each event needs a name"})
        self.tracked.extend((ident, e) for e in events)
        return _json(200, {"status": "ok", "message": "queued", "data": []})

    async def _identify(self, request: web.Request) -> web.Response:
        doc = await self._read(request)
        if isinstance(doc, web.Response):
            return doc
        items = doc.get("data") if isinstance(doc, dict) and "data" in doc else [doc]
        if not isinstance(items, list):
            return _json(400, {"status": "error", "message": "data must be a list"})
        for item in items:
            problem = self._check(item)
            if problem:
                return _json(400, {"status": "error", "message": problem})
        self.contacts.extend(items)
        return _json(200, {"status": "ok", "message": "queued", "data": []})

    @staticmethod
    def _check(item: Any) -> str | None:
        if not isinstance(item, dict) or not isinstance(item.get("traits"), dict):
            return "traits is required"
        ident, traits = item.get("id"), item["traits"]
        if not isinstance(ident, str) or not ident:
            return "id is required"
        if ident.startswith("$"):
            names = [p.strip().removeprefix("$") for p in ident.split(",")]
            if not any(traits.get(n) for n in names):
                return f"Missing trait {' or '.join(names)} required by id {ident}"
        return None


class FakeConvertr(_Fake):
    """One Convertr campaign with one form: the lead webhook and the fields endpoints."""

    def __init__(
        self,
        *,
        api_key: str = CONVERTR_API_KEY,
        campaign_id: int = 123,
        form_id: int = 45,
        publisher_id: int = 6,
        fields: tuple[str, ...] = ("firstName", "lastName", "email", "telephone", "company"),
        required: tuple[str, ...] = ("email",),
        hidden: tuple[str, ...] = (),
        form_name: str = "Lead form",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.campaign_id, self.form_id, self.publisher_id = campaign_id, form_id, publisher_id
        self.fields, self.required, self.hidden = fields, required, hidden
        self.form_name = form_name
        #: False: leads get 403 "Campaign is inactive".
        self.active = True
        #: Leads created: ``{"id": int, "fields": {name: value}, "query": {...}}``.
        self.leads: list[dict[str, Any]] = []
        self._ids = itertools.count(55907)

    def routes(self, app: web.Application) -> None:
        base = "/webhook/campaign"
        app.router.add_post(base + "/{cid}/global-form/{fid}/leads", self._lead)
        app.router.add_get(base + "/v2/{cid}/global-form/fields", self._fields_v2)
        app.router.add_get(base + "/{cid}/global-form/fields", self._fields_v1)

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.query.get("apikey") != self.api_key:
            return _json(401, {"code": 401, "message": "Access denied."})
        if request.match_info["cid"] != str(self.campaign_id):
            return web.Response(status=404, text="404 Not Found")
        return None

    async def _lead(self, request: web.Request) -> web.Response:
        if denied := self._denied(request):
            return denied
        if request.match_info["fid"] != str(self.form_id):
            return web.Response(status=404, text="404 Not Found")
        if request.query.get("publisherId") != str(self.publisher_id):
            return _json(404, {"code": 404, "message": "Publisher not found"})
        if not self.active:
            return _json(403, {"code": "403", "error": "Campaign is inactive"})
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        values = {k[5:-1]: v for k, v in form.items() if k.startswith("form[") and k.endswith("]")}
        errors: list[dict[str, str]] = []
        if set(values) - set(self.fields):
            errors.append({"message": "This form should not contain extra fields."})
        email = values.get("email")
        if email is not None and ("@" not in email or "." not in email.rpartition("@")[2]):
            errors.append(
                {"fieldName": "form[email]", "message": "This value is not a valid email address."}
            )
        errors += [
            {"fieldName": f"form[{name}]", "message": "This value should not be blank."}
            for name in self.required
            if not values.get(name)
        ]
        if errors:
            return _json(400, {"code": 400, "message": "Validation failed", "data": errors})
        lead_id = next(self._ids)
        self.leads.append({"id": lead_id, "fields": values, "query": dict(request.query)})
        return _json(
            201, {"code": 201, "message": "Lead was created successfully", "data": lead_id}
        )

    def _form_doc(self, *, v2: bool) -> list[dict[str, Any]]:
        fields: list[Any] = [
            {"key": f"form[{n}]", "hidden": n in self.hidden, "required": n in self.required}
            if v2
            else f"form[{n}]"
            for n in self.fields
        ]
        return [{"formName": self.form_name, "formId": self.form_id, "fields": fields}]

    async def _fields_v2(self, request: web.Request) -> web.Response:
        return self._denied(request) or _json(200, self._form_doc(v2=True))

    async def _fields_v1(self, request: web.Request) -> web.Response:
        return self._denied(request) or _json(200, self._form_doc(v2=False))


class FakeReceiver(_Fake):
    """Any HTTP endpoint (a signed-webhook target): answers every POST with 200 ``ok``."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._ok)

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


@pytest.fixture
async def fake_conveyour() -> AsyncIterator[FakeConveyour]:
    """A running :class:`FakeConveyour` with token :data:`CONVEYOUR_TOKEN`."""
    async with FakeConveyour() as fake:
        yield fake


@pytest.fixture
async def fake_convertr() -> AsyncIterator[FakeConvertr]:
    """A running :class:`FakeConvertr` (campaign 123, form 45, publisher 6)."""
    async with FakeConvertr() as fake:
        yield fake
