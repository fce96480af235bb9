"""REST hooks: subscriptions over HTTP, the SSRF guard, and signed notifications sent by a
real worker to real loopback receivers (verified with the standardwebhooks library)."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from relay import redis_keys
from relay.hooks import HookStore
from relay.settings import Settings
from relay.targets import GuardedResolver, TargetRefused, TargetUnresolved, check_target
from relay.worker import Worker
from tests.events import members
from tests.fakes import FakeReceiver

Client = TestClient[Any, Any]

#: Notifications retried quickly, so a drained worker finishes fast.
HOOKS_FAST = "\n[hooks]\nallow_private_targets = true\nretry_schedule = [0.05, 0.05]\n"


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver() as fake:
        yield fake


@pytest.fixture
async def other_receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver() as fake:
        yield fake


async def subscribe(client: Client, key: str, event: str, url: str) -> dict[str, Any]:
    resp = await client.post(
        "/v1/hooks", json={"target_url": url, "event": event}, headers={"X-API-Key": key}
    )
    assert resp.status == 201, await resp.text()
    doc: dict[str, Any] = await resp.json()
    return doc


async def drain(settings: Settings, redis: Redis) -> None:
    await asyncio.wait_for(Worker(settings, redis=redis, concurrency=4).run(drain=True), 20)


def verified(secret: str, request: Any) -> dict[str, Any]:
    """The notification's JSON, once its Standard Webhooks signature checks out."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    doc: dict[str, Any] = Webhook(secret).verify(request.body, headers)
    return doc


# --- the subscription API -----------------------------------------------------------


async def test_subscribe_list_unsubscribe(
    app_client: Any, make_settings: Callable[..., Settings], make_key: Any
) -> None:
    client = await app_client(make_settings(HOOKS_FAST))
    key = await make_key("webhooks")
    created = await subscribe(client, key, "lead.received", "https://hooks.zapier.test/h/1")
    assert set(created) == {"id", "event", "target_url", "secret", "created_at"}
    assert created["id"].startswith("hook_")
    assert created["secret"].startswith("whsec_")
    assert created["event"] == "lead.received"

    listed = await (await client.get("/v1/hooks", headers={"X-API-Key": key})).json()
    assert [h["id"] for h in listed] == [created["id"]]
    assert "secret" not in listed[0]

    resp = await client.delete(f"/v1/hooks/{created['id']}", headers={"X-API-Key": key})
    assert resp.status == 204
    assert await (await client.get("/v1/hooks", headers={"X-API-Key": key})).json() == []
    resp = await client.delete(f"/v1/hooks/{created['id']}", headers={"X-API-Key": key})
    assert resp.status == 404


async def test_another_keys_hook_is_not_found_and_not_listed(
    app_client: Any, make_settings: Callable[..., Settings], make_key: Any
) -> None:
    client = await app_client(make_settings(HOOKS_FAST))
    mine, theirs = await make_key("webhooks"), await make_key("webhooks")
    created = await subscribe(client, mine, "lead.delivered", "https://example.test/a")
    assert await (await client.get("/v1/hooks", headers={"X-API-Key": theirs})).json() == []
    resp = await client.delete(f"/v1/hooks/{created['id']}", headers={"X-API-Key": theirs})
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    listed = await (await client.get("/v1/hooks", headers={"X-API-Key": mine})).json()
    assert [h["id"] for h in listed] == [created["id"]]


async def test_hooks_need_the_webhooks_scope(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads", "read:events")
    resp = await client.post(
        "/v1/hooks",
        json={"target_url": "https://93.184.216.34/h", "event": "lead.received"},
        headers={"X-API-Key": key},
    )
    assert resp.status == 403
    assert "webhooks" in (await resp.json())["detail"]


async def test_unknown_event_is_422_naming_the_field(client: Client, make_key: Any) -> None:
    key = await make_key("webhooks")
    resp = await client.post(
        "/v1/hooks",
        json={"target_url": "https://93.184.216.34/h", "event": "deal.won"},
        headers={"X-API-Key": key},
    )
    assert resp.status == 422
    doc = await resp.json()
    assert doc["errors"][0]["loc"] == ["body", "event"]
    assert "lead.received" in doc["errors"][0]["msg"]
    assert doc["detail"].startswith("POST /v1/hooks: event: Input should be")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        # IPv6 forms that carry an IPv4 address: judged by that address.
        ("http://[64:ff9b::a00:1]/", "IPv6 form of 10.0.0.1, a private"),
        ("http://[64:ff9b::a9fe:a9fe]/", "IPv6 form of 169.254.169.254, a link-local"),
        ("http://[64:ff9b::7f00:1]/", "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[64:ff9b:1::a9fe:a9fe]/", "local-use NAT64"),
        ("http://[::7f00:1]/", "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[::127.0.0.1]/", "IPv6 form of 127.0.0.1, a loopback"),
        ("http://[::ffff:0:a00:1]/", "IPv6 form of 10.0.0.1, a private"),
        ("http://[2002:a9fe:a9fe::1]/", "IPv6 form of 169.254.169.254"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "IPv6 form of 127.0.0.1"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        # Hosts that are IPv4 addresses written as numbers.
        ("http://2130706433/", "2130706433 means 127.0.0.1, a loopback"),
        ("http://0x7f.1/", "0x7f.1 means 127.0.0.1, a loopback"),
        ("http://127.1/", "127.1 means 127.0.0.1, a loopback"),
        ("http://0177.0.0.1/", "0177.0.0.1 means 127.0.0.1, a loopback"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "means 169.254.169.254, a link-local"),
        ("http://127.0.0.1./", "means 127.0.0.1, a loopback"),
        ("http://0x08080808/", "non-standard form: write it as 8.8.8.8"),
        ("http://1.2.3.256/", "1.2.3.256 is not a valid IPv4 address"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://localhost/hook", "localhost resolves to"),
        ("ftp://93.184.216.34/hook", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("https://user:pw@93.184.216.34/", "credentials in the URL"),
    ],
)
async def test_ssrf_guard_refuses_targets(
    client: Client, make_key: Any, redis: Redis, url: str, why: str
) -> None:
    key = await make_key("webhooks")
    resp = await client.post(
        "/v1/hooks", json={"target_url": url, "event": "lead.received"}, headers={"X-API-Key": key}
    )
    assert resp.status == 422, await resp.text()
    doc = await resp.json()
    assert why in doc["detail"]
    assert doc["errors"][0]["loc"] == ["body", "target_url"]
    assert await redis.hlen(redis_keys.HOOKS_INDEX) == 0


async def test_public_address_is_accepted_without_any_request(
    client: Client, make_key: Any
) -> None:
    # An IP literal needs no DNS: nothing leaves the machine when subscribing.
    key = await make_key("webhooks")
    created = await subscribe(client, key, "event.failed", "https://93.184.216.34/hook")
    assert created["target_url"] == "https://93.184.216.34/hook"


async def test_allow_private_targets_lets_loopback_in(
    app_client: Any, make_settings: Callable[..., Settings], make_key: Any
) -> None:
    client = await app_client(make_settings("[hooks]\nallow_private_targets = true\n"))
    key = await make_key("webhooks")
    await subscribe(client, key, "lead.received", "http://127.0.0.1:9/hook")


async def test_guarded_resolver_refuses_a_name_that_resolves_to_loopback(
    receiver: FakeReceiver,
) -> None:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientError, match="not a public address"):
            await session.post(f"http://localhost:{receiver.port}/hook", data=b"{}")
    assert receiver.requests == []


async def test_check_target_unit() -> None:
    await check_target("http://127.0.0.1/", allow_private=True)
    await check_target("https://8.8.8.8/x", allow_private=False)
    with pytest.raises(TargetRefused, match="no host"):
        await check_target("http:///x", allow_private=False)

    async def no_dns(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def to_metadata(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    # Unresolvable now: refused when subscribing, retried when sending (TargetUnresolved).
    with pytest.raises(TargetUnresolved, match="does not resolve"):
        await check_target("http://hooks.example.com/", allow_private=False, resolve=no_dns)
    with pytest.raises(TargetRefused, match=re.escape("169.254.169.254, a link-local")) as info:
        await check_target("http://rebound.example.com/", allow_private=False, resolve=to_metadata)
    assert not isinstance(info.value, TargetUnresolved)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("64:ff9b::a00:1", "10.0.0.1, a private address"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254, a link-local address"),
        ("64:ff9b::7f00:1", "127.0.0.1, a loopback address"),
        ("64:ff9b:1::a9fe:a9fe", "local-use NAT64"),
        ("64:ff9b:1:fffe::7f00:1", "local-use NAT64"),
        ("::7f00:1", "127.0.0.1, a loopback address"),
        ("::a9fe:a9fe", "169.254.169.254, a link-local address"),
        ("::ffff:10.0.0.1", "10.0.0.1, a private address"),
        ("::ffff:0:7f00:1", "127.0.0.1, a loopback address"),
        ("2002:7f00:1::", "127.0.0.1, a loopback address"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1, a loopback address"),
        ("::", "unspecified"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (a target refused, not a bind)
    ],
)
async def test_send_time_check_judges_the_ipv4_inside_ipv6(address: str, why: str) -> None:
    # What the worker runs before each notification (relay.notify), as a function:
    # the literal, and a name that now resolves to it (DNS rebinding).
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(TargetRefused, match=re.escape(why)):
        await check_target(f"http://{host}/hook", allow_private=False)

    async def rebound(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    with pytest.raises(TargetRefused, match=re.escape(why)):
        await check_target("http://hooks.example.com/", allow_private=False, resolve=rebound)

    class Inner(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(
                    hostname=host, host=address, port=port, family=family, proto=6, flags=0
                )
            ]

        async def close(self) -> None:
            pass

    with pytest.raises(OSError, match="not a public address"):
        await GuardedResolver(Inner()).resolve("hooks.example.com", 443)


@pytest.mark.parametrize(
    "address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111"]
)
async def test_ipv6_forms_of_public_addresses_pass(address: str) -> None:
    # No request is made: the check is about the literal only.
    await check_target(f"https://[{address}]/hook", allow_private=False)


async def test_another_process_sees_a_new_subscription_at_once(redis: Redis) -> None:
    watcher, writer = HookStore(redis), HookStore(redis)
    task = asyncio.create_task(watcher.listen())
    try:
        for _ in range(100):
            if "live" in repr(watcher):
                break
            await asyncio.sleep(0.01)
        assert await watcher.matching("lead.received") == []  # now cached
        sub = await writer.create(key_id="key_x", event="lead.received", target_url="http://x/")
        for _ in range(100):
            if await watcher.matching("lead.received"):
                break
            await asyncio.sleep(0.01)
        assert [s.id for s in await watcher.matching("lead.received")] == [sub.id]
        await writer.delete(sub.id)
        for _ in range(100):
            if not await watcher.matching("lead.received"):
                break
            await asyncio.sleep(0.01)
        assert await watcher.matching("lead.received") == []
        assert sub.secret not in repr(sub)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- notifications, end to end ----------------------------------------------------------

Setup = Callable[..., Awaitable[tuple[Client, Settings]]]


@pytest.fixture
def setup(app_client: Any, make_settings: Callable[..., Settings], receiver: FakeReceiver) -> Setup:
    """An API whose leads go to a webhook destination (the receiver's /crm)."""

    async def make(hooks: str = HOOKS_FAST) -> tuple[Client, Settings]:
        toml = f"""
[destinations.crm]
type = "webhook"
url = "{receiver.url}/crm"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["lead", "contact"]
retry_schedule = [0.05]
{hooks}"""
        settings = make_settings(toml)
        return await app_client(settings), settings

    return make


async def test_received_and_delivered_notifications_are_signed(
    setup: Setup, receiver: FakeReceiver, make_key: Any, redis: Redis
) -> None:
    client, settings = await setup()
    hooks_key = await make_key("webhooks")
    received = await subscribe(client, hooks_key, "lead.received", f"{receiver.url}/received")
    delivered = await subscribe(client, hooks_key, "lead.delivered", f"{receiver.url}/done")
    await subscribe(client, hooks_key, "contact.received", f"{receiver.url}/contacts")

    key = await make_key("write:leads")
    resp = await client.post(
        "/v1/leads",
        json={"email": "ann@example.com", "first_name": "Ann"},
        headers={"X-API-Key": key},
    )
    assert resp.status == 202
    event_id = (await resp.json())["id"]
    await drain(settings, redis)

    by_path = {r.path: r for r in receiver.requests}
    assert set(by_path) == {"/crm", "/received", "/done"}  # no contact.received for a lead
    first = verified(received["secret"], by_path["/received"])
    assert first["event"] == "lead.received"
    assert first["id"] == event_id
    assert first["test"] is False
    assert first["payload"]["email"] == "ann@example.com"
    done = verified(delivered["secret"], by_path["/done"])
    assert done["event"] == "lead.delivered"
    assert done["destination"] == "crm"
    assert done["status"] == "delivered"
    # Each notification has its own webhook-id, kept across retries, never the event id.
    ids = {by_path[p].headers["webhook-id"] for p in ("/received", "/done")}
    assert len(ids) == 2
    assert all(i.startswith("ntf_") for i in ids)
    # The event view is unchanged by its notifications.
    view = await (
        await client.get(
            f"/v1/events/{event_id}", headers={"X-API-Key": await make_key("read:events")}
        )
    ).json()
    assert [d["name"] for d in view["destinations"]] == ["crm"]
    # Signature checks fail with another secret.
    with pytest.raises(Exception, match="match"):
        verified(delivered["secret"], by_path["/received"])


async def test_failed_event_notifies_event_failed(
    setup: Setup, receiver: FakeReceiver, make_key: Any, redis: Redis
) -> None:
    client, settings = await setup()
    failed = await subscribe(
        client, await make_key("webhooks"), "event.failed", f"{receiver.url}/f"
    )
    receiver.script(status=422, body={"error": "bad lead"})  # the /crm delivery
    resp = await client.post(
        "/v1/leads",
        json={"email": "bo@example.com"},
        headers={"X-API-Key": await make_key("write:leads")},
    )
    event_id = (await resp.json())["id"]
    await drain(settings, redis)
    note = next(r for r in receiver.requests if r.path == "/f")
    doc = verified(failed["secret"], note)
    assert doc["event"] == "event.failed"
    assert doc["id"] == event_id
    assert doc["destination"] == "crm"
    assert doc["status"] == "dead"
    assert doc["destinations"][0]["attempts"][0]["status"] == 422


async def test_test_mode_notifications_fire_marked_test(
    setup: Setup, receiver: FakeReceiver, make_key: Any, redis: Redis
) -> None:
    client, settings = await setup()
    hooks_key = await make_key("webhooks")
    received = await subscribe(client, hooks_key, "lead.received", f"{receiver.url}/r")
    await subscribe(client, hooks_key, "lead.delivered", f"{receiver.url}/d")
    test_key = await make_key("write:leads", mode="test")
    resp = await client.post(
        "/v1/leads", json={"email": "t@example.com"}, headers={"X-API-Key": test_key}
    )
    assert resp.status == 202
    await drain(settings, redis)
    assert [r.path for r in receiver.requests] == ["/r"]  # never sent upstream, never delivered
    doc = verified(received["secret"], receiver.requests[0])
    assert doc["test"] is True
    assert doc["mode"] == "test"
    assert doc["status"] == "test"


async def test_410_deletes_the_subscription(
    setup: Setup, other_receiver: FakeReceiver, make_key: Any, redis: Redis
) -> None:
    client, settings = await setup("\n[hooks]\nallow_private_targets = true\n")
    hooks_key = await make_key("webhooks")
    sub = await subscribe(client, hooks_key, "lead.received", f"{other_receiver.url}/gone")
    other_receiver.script(status=410, body="unsubscribed")
    lead_key = await make_key("write:leads")
    await client.post("/v1/leads", json={"email": "a@example.com"}, headers={"X-API-Key": lead_key})
    await drain(settings, redis)
    assert await (await client.get("/v1/hooks", headers={"X-API-Key": hooks_key})).json() == []
    assert await redis.hget(redis_keys.HOOKS_INDEX, sub["id"]) is None
    # The next event notifies nobody at that URL (the API's cache heard of the deletion).
    await client.post("/v1/leads", json={"email": "b@example.com"}, headers={"X-API-Key": lead_key})
    await drain(settings, redis)
    assert len(other_receiver.requests) == 1


async def test_redirects_are_not_followed(
    setup: Setup,
    receiver: FakeReceiver,
    other_receiver: FakeReceiver,
    make_key: Any,
    redis: Redis,
) -> None:
    client, settings = await setup()
    target = f"{other_receiver.url}/r"
    await subscribe(client, await make_key("webhooks"), "lead.received", target)
    other_receiver.script(status=302, headers={"Location": f"{receiver.url}/internal"})
    await client.post(
        "/v1/leads",
        json={"email": "a@example.com"},
        headers={"X-API-Key": await make_key("write:leads")},
    )
    await drain(settings, redis)
    assert [r.path for r in receiver.requests] == ["/crm"]  # never /internal
    assert len(other_receiver.requests) == 1  # and not retried
    dead = await members(redis, functools.partial(redis_keys.dead, redis_keys.NOTIFICATIONS))
    assert len(dead) == 1
    attempts = await redis.hmget(redis_keys.event(str(dead[0])), f"a:{redis_keys.NOTIFICATIONS}:1")
    assert "redirects are not followed" in str(attempts[0])


async def test_guard_applies_again_when_sending(
    setup: Setup,
    receiver: FakeReceiver,
    make_key: Any,
    make_settings: Callable[..., Settings],
    redis: Redis,
) -> None:
    # Subscribed while private targets were allowed; the worker now runs without that.
    client, settings = await setup()
    await subscribe(
        client, await make_key("webhooks"), "lead.received", f"http://localhost:{receiver.port}/r"
    )
    await client.post(
        "/v1/leads",
        json={"email": "a@example.com"},
        headers={"X-API-Key": await make_key("write:leads")},
    )
    strict = make_settings(settings.config.read_text().replace("allow_private_targets = true", ""))  # type: ignore[union-attr]
    assert not strict.hooks.allow_private_targets
    await drain(strict, redis)
    assert [r.path for r in receiver.requests] == ["/crm"]  # the delivery, no notification
    dead = await members(redis, functools.partial(redis_keys.dead, redis_keys.NOTIFICATIONS))
    attempts = await redis.hmget(redis_keys.event(str(dead[0])), f"a:{redis_keys.NOTIFICATIONS}:1")
    assert "target_refused" in str(attempts[0])
    assert "loopback" in str(attempts[0])


async def test_notifications_retry_like_deliveries(
    setup: Setup, other_receiver: FakeReceiver, make_key: Any, redis: Redis
) -> None:
    client, settings = await setup()
    target = f"{other_receiver.url}/r"
    sub = await subscribe(client, await make_key("webhooks"), "lead.received", target)
    other_receiver.script(status=503, body="busy")
    await client.post(
        "/v1/leads",
        json={"email": "a@example.com"},
        headers={"X-API-Key": await make_key("write:leads")},
    )
    await drain(settings, redis)
    tries = other_receiver.requests
    assert len(tries) == 2
    assert tries[0].headers["webhook-id"] == tries[1].headers["webhook-id"]
    assert verified(sub["secret"], tries[1])["event"] == "lead.received"
