"""Adapters against fake upstreams: every answer class, timeouts, secrets, signing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from relay.adapters import (
    Attempt,
    ConvertrAdapter,
    ConveyourAdapter,
    Outcome,
    WebhookAdapter,
    check_mapping,
    classify_status,
    make_adapter,
    sign,
)
from relay.adapters.classify import excerpt, scrub
from relay.adapters.transport import Answer, read, send
from relay.errors import ConfigError, NoAnswer
from relay.settings import ConvertrDestination, ConveyourDestination, WebhookDestination
from tests.fakes import (
    CONVERTR_API_KEY,
    CONVEYOUR_APPKEY,
    CONVEYOUR_TOKEN,
    FakeConvertr,
    FakeConveyour,
    FakeReceiver,
)
from tests.redis_server import free_port

WHSEC = "whsec_" + base64.b64encode(b"a-webhook-signing-key-32-bytes!!").decode()
ADA = {"email": "ada@example.com", "phone": "+447123456789", "first_name": "Ada"}


def event(payload: dict[str, Any] | None = None, *, eid: str = "evt_01JTEST") -> dict[str, Any]:
    """A stored event as ``NewEvent.to_json()`` writes it."""
    return {
        "id": eid,
        "type": "lead",
        "mode": "live",
        "key_id": "key_1",
        "received_at": "2026-01-01T00:00:00+00:00",
        "payload": ADA if payload is None else payload,
        "destinations": ["dest"],
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def cy() -> AsyncIterator[FakeConveyour]:
    async with FakeConveyour() as fake:
        yield fake


@pytest.fixture
async def cv() -> AsyncIterator[FakeConvertr]:
    async with FakeConvertr() as fake:
        yield fake


@pytest.fixture
async def hook() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver() as fake:
        yield fake


def cy_adapter(url: str, session: aiohttp.ClientSession, **kw: Any) -> ConveyourAdapter:
    kw.setdefault("token", SecretStr(CONVEYOUR_TOKEN))
    return ConveyourAdapter("cy", ConveyourDestination(base_url=url, **kw), session)


def cv_adapter(url: str, session: aiohttp.ClientSession, **kw: Any) -> ConvertrAdapter:
    kw = {"api_key": SecretStr(CONVERTR_API_KEY), "campaign_id": 123, "form_id": 45} | kw
    config = ConvertrDestination(base_url=url, publisher_id=kw.pop("publisher_id", 6), **kw)
    return ConvertrAdapter("cv", config, session)


def hook_adapter(url: str, session: aiohttp.ClientSession, **kw: Any) -> WebhookAdapter:
    config = WebhookDestination(url=url + "/hook", secret=SecretStr(WHSEC), **kw)
    return WebhookAdapter("crm", config, session)


# --- pure helpers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "delivered"), (204, "delivered"), (401, "credentials"), (403, "credentials")]
    + [(s, "retry") for s in (408, 425, 429, 500, 502, 503, 504)]
    + [(s, "rejected") for s in (400, 404, 409, 410, 422)]
    + [(302, "credentials")],
)
def test_classify_status(status: int, outcome: str) -> None:
    assert classify_status(status) == Outcome(outcome)


def test_scrub_and_excerpt() -> None:
    assert scrub("k=a b+c&x=a%20b%2Bc a b+c", ["a b+c"]) == "k=***&x=*** ***"
    body = ("x" * 498 + "SECRET" + "y" * 100).encode()
    assert excerpt(body, ["SECRET"]) == "x" * 498 + "**"


# --- ConveYour ---------------------------------------------------------------


async def test_conveyour_identify(cy: FakeConveyour, session: aiohttp.ClientSession) -> None:
    payload = {**ADA, "city": "Leeds", "traits": {"plan": "pro", "city": "York", "mobile": "x"}}
    attempt = await cy_adapter(cy.url, session).deliver(event(payload))
    assert attempt.outcome is Outcome.delivered
    assert attempt.status == 200
    assert attempt.duration_ms > 0
    assert "queued" in attempt.excerpt
    (req,) = cy.requests
    assert req.path == "/api/analytics/identify"
    assert req.headers["x-conveyour-token"] == CONVEYOUR_TOKEN
    assert "x-conveyour-appkey" not in req.headers
    # phone is sent as mobile; custom traits never override canonical fields
    traits = {"email": "ada@example.com", "mobile": "+447123456789", "first_name": "Ada"}
    assert req.parsed == {"id": "$email", "traits": traits | {"city": "Leeds", "plan": "pro"}}


async def test_conveyour_appkey(session: aiohttp.ClientSession) -> None:
    async with FakeConveyour(appkey=CONVEYOUR_APPKEY) as fake:
        good = cy_adapter(fake.url, session, appkey=SecretStr(CONVEYOUR_APPKEY))
        assert (await good.deliver(event())).outcome is Outcome.delivered
        assert fake.requests[0].headers["x-conveyour-appkey"] == CONVEYOUR_APPKEY
        missing = await cy_adapter(fake.url, session).deliver(event())
        assert (missing.outcome, missing.status, missing.excerpt) == (Outcome.credentials, 403, "")


async def test_conveyour_bad_token(cy: FakeConveyour, session: aiohttp.ClientSession) -> None:
    attempt = await cy_adapter(cy.url, session, token=SecretStr("wrong")).deliver(event())
    assert (attempt.outcome, attempt.status, attempt.error) == (
        Outcome.credentials,
        403,
        "http_403",
    )


async def test_conveyour_mobile_id(cy: FakeConveyour, session: aiohttp.ClientSession) -> None:
    adapter = cy_adapter(cy.url, session, id="$mobile")
    no_phone = await adapter.deliver(event({"email": "ada@example.com"}))
    assert no_phone.outcome is Outcome.rejected
    assert no_phone.note is not None
    assert "no mobile" in no_phone.note
    assert cy.requests == []
    assert (await adapter.deliver(event({"phone": "+15551234567"}))).outcome is Outcome.delivered
    assert cy.contacts == [{"id": "$mobile", "traits": {"mobile": "+15551234567"}}]
    either = cy_adapter(cy.url, session, id="$email,$mobile")
    assert (await either.deliver(event({"phone": "+15551234567"}))).outcome is Outcome.delivered
    assert (await either.deliver(event({"first_name": "X"}))).outcome is Outcome.rejected


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"status": "error", "message": "Contact is blocked"}, Outcome.rejected),
        (200, "<html>maintenance</html>", Outcome.retry),
        (202, {"status": "ok"}, Outcome.retry),
        (400, {"status": "error", "message": "Invalid email"}, Outcome.rejected),
        (404, "", Outcome.rejected),
        (422, "", Outcome.rejected),
        (401, "", Outcome.credentials),
        (408, "", Outcome.retry),
        (425, "", Outcome.retry),
        (500, "", Outcome.retry),
        (503, "", Outcome.retry),
    ],
)
async def test_conveyour_answers(
    cy: FakeConveyour,
    session: aiohttp.ClientSession,
    status: int,
    body: Any,
    outcome: Outcome,
) -> None:
    cy.script(status=status, body=body)
    attempt = await cy_adapter(cy.url, session).deliver(event())
    assert (attempt.outcome, attempt.status) == (outcome, status)
    if isinstance(body, dict) and outcome is Outcome.rejected:
        assert attempt.note is not None
        assert body["message"] in attempt.note


async def test_conveyour_secrets_never_shown(session: aiohttp.ClientSession) -> None:
    async with FakeConveyour(appkey=CONVEYOUR_APPKEY) as fake:
        adapter = cy_adapter(fake.url, session, appkey=SecretStr(CONVEYOUR_APPKEY))
        echo = f"bad token {CONVEYOUR_TOKEN} / {CONVEYOUR_APPKEY}"
        fake.script(status=400, body={"status": "error", "message": echo})
        attempt = await adapter.deliver(event())
        shown = f"{attempt.to_dict()} {adapter!r}"
        assert CONVEYOUR_TOKEN not in shown
        assert CONVEYOUR_APPKEY not in shown
        assert "bad token *** / ***" in attempt.excerpt


async def test_conveyour_batch(cy: FakeConveyour, session: aiohttp.ClientSession) -> None:
    adapter = cy_adapter(cy.url, session)
    events = [event({"email": f"c{i}@example.com"}) for i in range(3)]
    events.insert(1, event({"phone": "+15551234567"}))  # no email: rejected, not sent
    attempts = await adapter.deliver_batch(events)
    assert [a.outcome for a in attempts] == ["delivered", "rejected", "delivered", "delivered"]
    (req,) = cy.requests
    assert [item["traits"]["email"] for item in req.parsed["data"]] == [
        "c0@example.com",
        "c1@example.com",
        "c2@example.com",
    ]


async def test_conveyour_batch_falls_back(
    cy: FakeConveyour, session: aiohttp.ClientSession
) -> None:
    adapter = cy_adapter(cy.url, session)
    events = [event({"email": f"c{i}@example.com"}) for i in range(3)]
    # the batch and then the first single are refused; the others still get through
    cy.script(status=400, body={"status": "error", "message": "bad contact"}, times=2)
    attempts = await adapter.deliver_batch(events)
    assert [a.outcome for a in attempts] == ["rejected", "delivered", "delivered"]
    assert len(cy.requests) == 4
    assert [c["traits"]["email"] for c in cy.contacts] == ["c1@example.com", "c2@example.com"]
    cy.script(status=503, headers={"Retry-After": "7"})
    again = await adapter.deliver_batch(events)
    assert [(a.outcome, a.retry_after_s) for a in again] == [(Outcome.retry, 7.0)] * 3
    assert len(cy.requests) == 5


# --- timeouts, refused connections, Retry-After (every adapter) ---------------


async def test_timeout(cy: FakeConveyour, session: aiohttp.ClientSession) -> None:
    cy.script(delay_s=2)
    attempt = await cy_adapter(cy.url, session, timeout_s=0.2).deliver(event())
    assert (attempt.outcome, attempt.status, attempt.error) == (Outcome.retry, None, "TimeoutError")
    assert 150 < attempt.duration_ms < 1500


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for adapter in (cy_adapter(url, session), cv_adapter(url, session), hook_adapter(url, session)):
        attempt = await adapter.deliver(event())
        assert (attempt.outcome, attempt.status) == (Outcome.retry, None)
        assert attempt.error is not None
        assert attempt.error.startswith("ClientConnector")
        assert CONVERTR_API_KEY not in str(attempt)


@pytest.mark.parametrize("as_date", [False, True])
async def test_retry_after(cv: FakeConvertr, session: aiohttp.ClientSession, as_date: bool) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    cv.script(
        status=429, headers={"Retry-After": format_datetime(when, usegmt=True) if as_date else "2"}
    )
    attempt = await cv_adapter(cv.url, session).deliver(event())
    assert (attempt.outcome, attempt.status, attempt.error) == (Outcome.retry, 429, "http_429")
    assert attempt.retry_after_s is not None
    if as_date:
        assert 27 <= attempt.retry_after_s <= 31
    else:
        assert attempt.retry_after_s == 2.0


# --- the transport seam: one Attempt back, whatever happened ------------------


async def test_send_gives_the_judges_attempt_or_a_retry(
    hook: FakeReceiver, session: aiohttp.ClientSession
) -> None:
    answers: list[Answer] = []
    verdict = Attempt(Outcome.rejected, 302, 1.0, note="judged")

    def judge(answer: Answer) -> Attempt:
        answers.append(answer)
        return verdict

    hook.script(status=302, body="moved", headers={"Location": f"{hook.url}/elsewhere"})
    judged = await send(session, "POST", hook.url + "/in", timeout_s=1, secrets=(), judge=judge)
    assert judged is verdict
    assert [(a.status, a.body) for a in answers] == [(302, b"moved")]
    assert [r.path for r in hook.requests] == ["/in"]  # the redirect was not followed
    hook.script(delay_s=2)
    silent = await send(session, "POST", hook.url + "/in", timeout_s=0.2, secrets=(), judge=judge)
    assert silent == Attempt(
        Outcome.retry,
        None,
        silent.duration_ms,
        error="TimeoutError",
        note="no answer within 0.2 s",
    )
    assert 150 < silent.duration_ms < 1500
    assert len(answers) == 1  # no answer, no judgement


async def test_no_answer_is_scrubbed(hook: FakeReceiver) -> None:
    # aiohttp's message carries the URL; a raising session makes one from an answer.
    url = f"{hook.url}/in?token={CONVEYOUR_TOKEN}"
    async with aiohttp.ClientSession(raise_for_status=True) as raising:
        hook.script(status=500)
        with pytest.raises(NoAnswer) as info:
            await read(raising, "POST", url, timeout_s=1, secrets=[CONVEYOUR_TOKEN])
        hook.script(status=500)
        attempt = await send(
            raising, "POST", url, timeout_s=1, secrets=[CONVEYOUR_TOKEN], judge=_unused
        )
    assert (info.value.error, info.value.__cause__) == ("ClientResponseError", None)
    assert "token=***" in str(info.value)
    assert CONVEYOUR_TOKEN not in str(info.value)
    assert (attempt.outcome, attempt.error, attempt.note) == (
        Outcome.retry,
        "ClientResponseError",
        str(info.value),
    )


def _unused(answer: Answer) -> Attempt:
    raise AssertionError(f"judged {answer}")


# --- Convertr ----------------------------------------------------------------


async def test_convertr_lead(cv: FakeConvertr, session: aiohttp.ClientSession) -> None:
    payload = {**ADA, "city": "Leeds", "traits": {"utm_source": "ads"}}
    attempt = await cv_adapter(cv.url, session, link_id=7).deliver(event(payload))
    assert (attempt.outcome, attempt.status, attempt.upstream_id) == (
        Outcome.delivered,
        201,
        "55907",
    )
    assert attempt.note == "not sent (no mapping): city, utm_source"
    (req,) = cv.requests
    assert req.path == "/webhook/campaign/123/global-form/45/leads"
    assert req.query == {"apikey": CONVERTR_API_KEY, "publisherId": "6", "campaignLinkId": "7"}
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.parsed == {
        "form[email]": "ada@example.com",
        "form[telephone]": "+447123456789",
        "form[firstName]": "Ada",
    }
    again = await cv_adapter(cv.url, session).deliver(event())
    assert again.upstream_id == "55908"
    assert "campaignLinkId" not in cv.requests[1].query


async def test_convertr_custom_trait_mapping(session: aiohttp.ClientSession) -> None:
    async with FakeConvertr(fields=("email", "source")) as fake:
        fields = {"email": "email", "utm_source": "source"}
        payload = {"email": "ada@example.com", "traits": {"utm_source": "ads"}}
        attempt = await cv_adapter(fake.url, session, fields=fields).deliver(event(payload))
        assert (attempt.outcome, attempt.note) == (Outcome.delivered, None)
        assert fake.leads[0]["fields"] == {"email": "ada@example.com", "source": "ads"}


@pytest.mark.parametrize(
    ("setup", "kw", "outcome", "status", "says"),
    [
        ("extra", {}, Outcome.rejected, 400, "should not contain extra fields"),
        ("email", {}, Outcome.rejected, 400, "form[email]: This value is not a valid email"),
        ("", {"api_key": SecretStr("wrong-key")}, Outcome.credentials, 401, "API key"),
        ("inactive", {}, Outcome.credentials, 403, "Campaign is inactive"),
        ("", {"publisher_id": 99}, Outcome.credentials, 404, "Publisher not found"),
        ("", {"campaign_id": 999}, Outcome.credentials, 404, "check campaign_id"),
        ("", {"form_id": 999}, Outcome.credentials, 404, "check campaign_id"),
        ("500", {}, Outcome.retry, 500, None),
    ],
)
async def test_convertr_answers(
    cv: FakeConvertr,
    session: aiohttp.ClientSession,
    setup: str,
    kw: dict[str, Any],
    outcome: Outcome,
    status: int,
    says: str | None,
) -> None:
    payload = dict(ADA)
    if setup == "extra":
        kw = {"fields": {"email": "email", "first_name": "givenName"}}
    elif setup == "email":
        payload["email"] = "not-an-email"
    elif setup == "inactive":
        cv.active = False
    elif setup == "500":
        cv.script(status=500, body={"code": 500, "message": ""})
    attempt = await cv_adapter(cv.url, session, **kw).deliver(event(payload))
    assert (attempt.outcome, attempt.status, attempt.error) == (outcome, status, f"http_{status}")
    if says:
        assert attempt.note is not None
        assert says in attempt.note
    if status == 400:
        assert "Validation failed" in attempt.excerpt
    assert cv.leads == []


async def test_convertr_nothing_mapped(cv: FakeConvertr, session: aiohttp.ClientSession) -> None:
    attempt = await cv_adapter(cv.url, session).deliver(event({"city": "Leeds"}))
    assert attempt.outcome is Outcome.rejected
    assert attempt.note is not None
    assert "not sent (no mapping): city" in attempt.note
    assert cv.requests == []


async def test_convertr_key_never_shown(cv: FakeConvertr) -> None:
    # aiohttp puts the URL (and so the apikey query parameter) in its exception messages
    async with aiohttp.ClientSession(raise_for_status=True) as raising:
        adapter = cv_adapter(cv.url, raising)
        cv.script(status=500, body=f"boom {CONVERTR_API_KEY}")
        attempt = await adapter.deliver(event())
    assert (attempt.outcome, attempt.error) == (Outcome.retry, "ClientResponseError")
    assert attempt.note is not None
    assert "apikey=***" in attempt.note
    assert CONVERTR_API_KEY not in f"{attempt} {adapter!r}"
    async with aiohttp.ClientSession() as session:
        cv.script(status=401, body=f"bad key {CONVERTR_API_KEY}")
        plain = await cv_adapter(cv.url, session).deliver(event())
    assert plain.excerpt == "bad key ***"


async def test_convertr_form_fields(session: aiohttp.ClientSession) -> None:
    async with FakeConvertr(required=("email", "telephone"), hidden=("company",)) as fake:
        adapter = cv_adapter(fake.url, session)
        fields = await adapter.form_fields()
        assert fake.requests[0].path == "/webhook/campaign/v2/123/global-form/fields"
        assert fields[0] == {"name": "firstName", "required": False, "hidden": False}
        assert {"name": "company", "required": False, "hidden": True} in fields
        problems = check_mapping({"email": "email", "job_title": "jobTitle"}, fields)
        assert len(problems) == 2
        assert problems[0].startswith("job_title -> jobTitle: the form has no field 'jobTitle'")
        assert problems[1] == "form field 'telephone' is required but nothing maps to it"
        mapping = {"email": "email", "phone": "telephone"}
        assert check_mapping(mapping, fields) == []
        fake.script(status=404, body="404 Not Found")  # no v2 here: v1's plain strings
        v1 = await adapter.form_fields()
        assert fake.requests[-1].path == "/webhook/campaign/123/global-form/fields"
        assert [f["name"] for f in v1] == [f["name"] for f in fields]
        with pytest.raises(ConfigError, match="no form 999"):
            await cv_adapter(fake.url, session, form_id=999).form_fields()
        with pytest.raises(ConfigError, match="401") as info:
            await cv_adapter(fake.url, session, api_key=SecretStr("nope-key")).form_fields()
        assert "nope-key" not in str(info.value)


async def test_convertr_form_fields_unreachable(
    cv: FakeConvertr, session: aiohttp.ClientSession
) -> None:
    # `relay config check` says why, with the key scrubbed and no chained traceback.
    refused = cv_adapter(f"http://127.0.0.1:{free_port()}", session)
    with pytest.raises(ConfigError) as info:
        await refused.form_fields()
    assert str(info.value).startswith("destinations.cv: could not reach Convertr: ClientConnector")
    assert info.value.__cause__ is None
    assert CONVERTR_API_KEY not in str(info.value)
    cv.script(delay_s=2)
    with pytest.raises(ConfigError) as info:
        await cv_adapter(cv.url, session, timeout_s=0.2).form_fields()
    assert str(info.value) == "destinations.cv: could not reach Convertr: no answer within 0.2 s"


# --- signed webhook ----------------------------------------------------------


def test_sign_known_vector() -> None:
    # The example from the Standard Webhooks reference libraries' tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


async def test_webhook_signed(hook: FakeReceiver, session: aiohttp.ClientSession) -> None:
    adapter = hook_adapter(hook.url, session)
    ev = event()
    attempt = await adapter.deliver(ev)
    assert (attempt.outcome, attempt.status, attempt.excerpt) == (Outcome.delivered, 200, "ok")
    await adapter.deliver(ev)
    first, second = hook.requests
    assert orjson.loads(first.body) == ev
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == ev["id"]
    ts = first.headers["webhook-timestamp"]
    assert abs(int(ts) - time.time()) < 5
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    mac = hmac.new(key, f"{ev['id']}.{ts}.".encode() + first.body, hashlib.sha256).digest()
    assert first.headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    # And as a receiver using the standardwebhooks library checks it:
    assert Webhook(WHSEC).verify(first.body, dict(first.headers)) == ev


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (204, "delivered"),
        (410, "rejected"),
        (400, "rejected"),
        (401, "credentials"),
        (429, "retry"),
        (500, "retry"),
    ],
)
async def test_webhook_answers(
    hook: FakeReceiver, session: aiohttp.ClientSession, status: int, outcome: str
) -> None:
    hook.script(status=status, body=f"echo {WHSEC}")
    adapter = hook_adapter(hook.url, session)
    attempt = await adapter.deliver(event())
    assert (attempt.outcome, attempt.status) == (Outcome(outcome), status)
    assert attempt.note == ("gone" if status == 410 else None)
    assert WHSEC.removeprefix("whsec_") not in f"{attempt} {adapter!r}"


async def test_make_adapter(session: aiohttp.ClientSession) -> None:
    url = "http://127.0.0.1:9"
    cy = ConveyourDestination(base_url=url, token=SecretStr("t"))
    cv = ConvertrDestination(
        base_url=url, api_key=SecretStr("k"), campaign_id=1, form_id=2, publisher_id=3
    )
    wh = WebhookDestination(url=url, secret=SecretStr(WHSEC))
    assert isinstance(make_adapter("a", cy, session), ConveyourAdapter)
    assert isinstance(make_adapter("b", cv, session), ConvertrAdapter)
    adapter = make_adapter("c", wh, session)
    assert isinstance(adapter, WebhookAdapter)
    assert adapter.name == "c"


async def test_conveyour_batch_resumes_tracks_and_asks_a_slot_per_further_call(
    cy: FakeConveyour, session: aiohttp.ClientSession
) -> None:
    adapter = cy_adapter(cy.url, session)
    tracked = [{"event": "applied"}, {"event": "hired"}]
    events = [
        event({"email": "a@example.com", "events": tracked}),  # identify and 1st track done
        event({"email": "b@example.com", "events": [{"event": "viewed"}]}),
        event({"email": "c@example.com"}),
    ]
    slots = 0

    async def before_each() -> None:
        nonlocal slots
        slots += 1

    attempts = await adapter.deliver_batch(events, before_each=before_each, done=[2, 0, 0])
    assert [(a.outcome, a.steps) for a in attempts] == [
        (Outcome.delivered, 3),
        (Outcome.delivered, 2),
        (Outcome.delivered, None),
    ]
    assert [r.path.rsplit("/", 1)[-1] for r in cy.requests] == ["identify", "track", "track"]
    assert [c["traits"]["email"] for c in cy.contacts] == ["b@example.com", "c@example.com"]
    assert cy.tracked == [("b@example.com", {"event": "viewed"}), ("a@example.com", tracked[1])]
    assert slots == len(cy.requests) - 1  # the first call went under the caller's slot
