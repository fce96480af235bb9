"""The partitioned keyspace (relay.partitions): ids that name their partition, tags that
spread over a cluster's masters, contacts that keep one partition, and, on a real Redis
with RELAY_PARTITIONS=4, ingest, order, limits, pauses, replay, listings and search
across every partition; a process started with another count refuses to start."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.crc import key_slot

from relay import redis_keys
from relay.connect import redis_client
from relay.deadletters import list_dead_letters, replay_dead_letters
from relay.errors import ConfigError
from relay.ids import new_event_id, partition_of
from relay.models import Lead
from relay.partitions import DEFAULT_PARTITIONS, contact_partition, ensure_partitions
from relay.queue import DeliveryQueue
from relay.settings import Settings
from relay.store import EventStore, contact_key
from relay.worker import Worker
from tests.events import new_lead
from tests.fakes import FakeReceiver
from tests.procs import clean_env, relay
from tests.redis_server import RedisServer, free_port

PARTS = 4
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_an_id_names_its_partition_and_ids_still_sort_by_time() -> None:
    for p in (0, 1, 3, 15, 1023):
        assert partition_of(new_event_id(partition=p)) == p
        assert partition_of(new_event_id(prefix="ntf_", partition=p)) == p
    ids = [new_event_id(partition=i % 7) for i in range(5_000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"evt_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    with pytest.raises(ValueError, match="partition 1024 is not in"):
        new_event_id(partition=1024)
    with pytest.raises(ValueError, match="not an event id"):
        partition_of("evt_nope")


def test_the_default_partitions_spread_over_a_three_master_cluster() -> None:
    # The slot ranges `redis-cli --cluster create` gives three masters.
    masters = [range(0, 5461), range(5461, 10923), range(10923, 16384)]
    slots = [key_slot(redis_keys.event(new_event_id(partition=p)).encode()) for p in range(16)]
    share = Counter(next(i for i, m in enumerate(masters) if s in m) for s in slots)
    assert sorted(share.values()) == [5, 5, 6]  # as even as 16 over 3 can be
    assert Settings.model_fields["partitions"].default == DEFAULT_PARTITIONS == 16
    # Every key of a partition shares its slot; control keys have theirs.
    p = 5
    tag = redis_keys.partition_tag(p)
    for key in (
        redis_keys.queue("d", p),
        redis_keys.retries("d", p),
        redis_keys.dead("d", p),
        redis_keys.heads("d", p),
        redis_keys.order("d", p, "abc"),
        redis_keys.who(p, "email", "a@b.c"),
        redis_keys.events_index(p),
        redis_keys.event(new_event_id(partition=p)),
    ):
        assert key.startswith(tag + ":"), key
        assert key_slot(key.encode()) == key_slot(tag.encode())
    control = {key_slot(k.encode()) for k in (redis_keys.inflight("d"), redis_keys.PARTITIONS)}
    assert control == {key_slot(redis_keys.rate("d").encode())}


def test_a_contact_keeps_its_partition(redis: Redis) -> None:
    store = EventStore(redis, retention_s=60, partitions=PARTS)
    ann = contact_key(Lead(email="ann@example.com", phone="+14155550100"))
    assert {partition_of(store.new_id(ann)) for _ in range(20)} == {
        contact_partition(contact_key(Lead(email="ann@example.com")), PARTS)
    }
    # By email first, else phone; neither: anywhere.
    assert ann == contact_key(Lead(email="ann@example.com"))
    assert contact_key(Lead(phone="+14155550100")) is not None
    assert contact_key(Lead()) is None
    assert {partition_of(store.new_id(None)) for _ in range(200)} == set(range(PARTS))
    spread = {
        partition_of(store.new_id(contact_key(Lead(email=f"p{i}@example.com")))) for i in range(60)
    }
    assert spread == set(range(PARTS))


async def test_a_busy_read_takes_one_partition_s_entries_then_the_next_s(redis: Redis) -> None:
    # What a worker reads at once becomes requests taken and settled at about the same
    # time: from one partition, they share that partition's script calls.
    queue = DeliveryQueue(redis, retention_s=60, partitions=PARTS)
    await queue.ensure_group("crm")
    leads = [new_lead(f"p{i}@example.com", "crm", partition=i % PARTS) for i in range(40)]
    await EventStore(redis, retention_s=60, partitions=PARTS).enqueue(leads)
    first = await queue.read("crm", "w", count=4, block_ms=1)
    second = await queue.read("crm", "w", count=4, block_ms=1)
    assert {e.partition for e in first} == {0}
    assert {e.partition for e in second} == {1}
    # Room for all: the turn's partition, then the rest of every other one.
    rest = await queue.read("crm", "w", count=100, block_ms=1)
    assert len(first + second + rest) == len(leads)
    assert rest[0].partition == 2


async def test_a_read_that_meets_a_stream_with_no_group_keeps_what_it_took(
    redis: Redis,
) -> None:
    # Two workers start on a new queue: one makes the groups, one partition after the
    # other, while the other reads. A read that took an entry from a partition with a
    # group, then met one without, used to drop that entry: pending for this consumer,
    # never sent, until the visibility window let another worker claim it.
    queue = DeliveryQueue(redis, retention_s=60, partitions=PARTS)
    await redis.xgroup_create(
        redis_keys.queue("crm", 0), redis_keys.CONSUMER_GROUP, id="0", mkstream=True
    )
    lead = new_lead("first@example.com", "crm", partition=0)
    await EventStore(redis, retention_s=60, partitions=PARTS).enqueue([lead])
    read = await queue.read("crm", "w", count=10, block_ms=1)
    assert [e.event for e in read] == [lead.id]
    pending = await redis.xpending(redis_keys.queue("crm", 0), redis_keys.CONSUMER_GROUP)
    assert pending["pending"] == 1  # what the consumer holds is what it was given
    # The read made the missing groups: the next one finds nothing more, and no error.
    assert await queue.read("crm", "w", count=10, block_ms=1) == []


async def test_a_process_with_another_count_refuses_to_start(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    await ensure_partitions(redis, PARTS)
    await ensure_partitions(redis, PARTS)  # the same count: fine, again
    with pytest.raises(ConfigError, match=r"RELAY_PARTITIONS is 8 but .* written with 4"):
        await ensure_partitions(redis, 8)
    (tmp_path / "relay.toml").write_text("")
    env = clean_env(RELAY_REDIS_URL=redis_server.url, RELAY_PARTITIONS="8")
    done = relay("worker", "--drain", cwd=tmp_path, env=env, check=False)
    assert done.returncode == 1
    assert "RELAY_PARTITIONS is 8" in done.stderr
    assert "drain" in done.stderr
    # relay serve listens at once (Redis may be away), and stops as soon as it sees it.
    done = relay("serve", "--port", str(free_port()), cwd=tmp_path, env=env, check=False)
    assert done.returncode == 1
    assert "relay: error: RELAY_PARTITIONS is 8" in done.stderr
    assert await redis.get(redis_keys.PARTITIONS) == str(PARTS)  # left as it was


@pytest.fixture
def partitioned(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with RELAY_PARTITIONS=4 and one webhook destination ``crm`` at ``url``."""

    def make(url: str, extra: str = "") -> Settings:
        return make_settings(
            f"""
[destinations.crm]
type = "webhook"
url = "{url}/crm"
secret = "{SECRET}"
events = ["lead"]
retry_schedule = [0.1]
{extra}
""",
            partitions=PARTS,
        )

    return make


async def _drain(settings: Settings, redis: Redis, *others: Redis) -> None:
    workers = [Worker(settings, redis=r, concurrency=8) for r in (redis, *others)]
    await asyncio.wait_for(asyncio.gather(*(w.run(drain=True) for w in workers)), 30)


async def _post(client: TestClient[Any, Any], key: str, leads: list[dict[str, Any]]) -> list[str]:
    resp = await client.post("/v1/leads", json=leads, headers={"X-API-Key": key})
    assert resp.status == 202, await resp.text()
    return [a["id"] for a in (await resp.json())["accepted"]]


async def test_contacts_spread_one_contact_in_order_and_listings_and_search_merge(
    redis: Redis,
    app_client: Any,
    make_key: Any,
    partitioned: Callable[..., Settings],
) -> None:
    async with FakeReceiver() as receiver:
        settings = partitioned(receiver.url)
        client = await app_client(settings)
        key = await make_key("write:leads", "read:events", "admin")
        many = await _post(
            client,
            key,
            [{"email": f"p{i}@example.com", "phone": f"+1415555{i:04d}"} for i in range(40)],
        )
        same = await _post(client, key, [{"email": "ann@example.com", "n": i} for i in range(20)])
        # Many contacts: every partition holds events; one contact's: one partition.
        sizes = [await redis.zcard(redis_keys.events_index(p)) for p in range(PARTS)]
        assert sum(sizes) == 60
        assert all(sizes), sizes
        assert len({partition_of(i) for i in same}) == 1
        await _drain(settings, redis)
        got = [r.parsed for r in receiver.requests if r.parsed]
        anns = [
            d["payload"]["traits"]["n"] for d in got if d["payload"]["email"] == "ann@example.com"
        ]
        assert anns == list(range(20))
        assert len(receiver.requests) == 60

        # The listing merges the partitions newest first, and pages on across them.
        seen: list[str] = []
        before: str | None = None
        while True:
            query = {"limit": "7", **({"before": before} if before else {})}
            resp = await client.get("/v1/events", params=query, headers={"X-API-Key": key})
            page = [e["id"] for e in await resp.json()]
            if not page:
                break
            seen += page
            before = page[-1]
        assert seen == sorted(many + same, reverse=True)

        # Search: by email (one partition) and by phone (every partition's index).
        resp = await client.get(
            "/v1/events",
            params={"q": "ann@example.com", "limit": "100"},
            headers={"X-API-Key": key},
        )
        assert sorted(e["id"] for e in await resp.json()) == sorted(same)
        store = EventStore(redis, retention_s=3600, partitions=PARTS)
        found = await store.find("+1 415 555 0007", limit=5)
        assert [v.id for v in found] == [many[7]]
        assert (await store.get(many[7])) is not None


async def test_dead_letters_of_every_partition_are_listed_and_replayed(
    redis: Redis, partitioned: Callable[..., Settings]
) -> None:
    async with FakeReceiver() as receiver:
        settings = partitioned(receiver.url)
        receiver.script(status=400, times=8)  # the first 8 requests: rejected, dead
        store = EventStore(redis, retention_s=3600, partitions=PARTS)
        events = [new_lead(f"d{i}@example.com", "crm", partition=i % PARTS) for i in range(8)]
        await store.enqueue(events)
        await _drain(settings, redis)
        letters = await list_dead_letters(redis, "crm", partitions=PARTS)
        assert sorted(d.event_id for d in letters) == sorted(e.id for e in events)
        assert [d.dead_at for d in letters] == sorted(d.dead_at for d in letters)
        assert all(d.status_code == 400 for d in letters)
        assert await replay_dead_letters(redis, "crm", partitions=PARTS) == 8
        await _drain(settings, redis)
        views = [await store.get(e.id) for e in events]
        assert {v.status for v in views if v is not None} == {"delivered"}
        assert await list_dead_letters(redis, "crm", partitions=PARTS) == []


@pytest.mark.parametrize("limit", ["max_in_flight", "rate"])
async def test_limits_hold_across_partitions_and_workers(
    limit: str,
    redis: Redis,
    redis_server: RedisServer,
    partitioned: Callable[..., Settings],
) -> None:
    async with FakeReceiver() as receiver:
        if limit == "max_in_flight":
            receiver.script(delay_s=0.1, times=1000)
            settings = partitioned(receiver.url, "max_in_flight = 3")
        else:
            settings = partitioned(receiver.url, 'rate_limit = "10/s"')
        store = EventStore(redis, retention_s=60, partitions=PARTS)
        count = 24
        await store.enqueue(
            [new_lead(f"p{i}@example.com", "crm", partition=i % PARTS) for i in range(count)]
        )
        other = redis_client(redis_server.url)
        try:
            await _drain(settings, redis, other)
        finally:
            await other.aclose()
        assert len(receiver.requests) == count
        if limit == "max_in_flight":
            assert receiver.most_at_once == 3
        else:
            times = sorted(r.time for r in receiver.requests)
            # No second holds more than 10 (a sliding window: each 11th is 1 s later).
            assert all(b - a >= 0.95 for a, b in zip(times, times[10:], strict=False)), times


async def test_a_429_pauses_every_partition(
    redis: Redis, partitioned: Callable[..., Settings]
) -> None:
    async with FakeReceiver() as receiver:
        settings = partitioned(receiver.url, "max_in_flight = 1")
        receiver.script(status=429, headers={"Retry-After": "1"})
        store = EventStore(redis, retention_s=60, partitions=PARTS)
        await store.enqueue(
            [new_lead(f"p{i}@example.com", "crm", partition=i % PARTS) for i in range(8)]
        )
        started = time.time()
        await _drain(settings, redis)
        first, *rest = sorted(r.time for r in receiver.requests)
        assert first - started < 1
        # After the 429, nothing of any partition went until the pause ended.
        assert rest
        assert min(rest) - first >= 0.95, (first, rest)
        assert len(rest) == 8  # the 429'd one again, and the other seven
