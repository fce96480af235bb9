"""relay on a Redis Cluster and on a Sentinel-managed Redis, through its real paths.

``redis_server`` is overridden here: every test of this module, its own and the
existing ones imported below, runs once on a 3-master cluster and once on a
Sentinel-managed master (the session's, from conftest), through ``redis``,
``make_settings`` and the app factory exactly as on a single Redis. The imported tests
cover ingest → worker → upstream → delivered, per-contact order with two workers,
idempotency, Redis's own errors passed through untranslated, key revocation seen by
another client over pub/sub, hook subscriptions seen at once, signed notifications,
and every console page (sessions, the chart); the tests below add the CLI (a
subprocess of this tree), scripts loaded again after SCRIPT FLUSH, replicas
confirming writes, Sentinel failover and what an unreachable topology gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import MovedError

from relay import redis_keys
from relay.connect import MASTER_CHECK_S, check_version, redis_client
from relay.errors import StoreUnavailable
from relay.keystore import KeyStore
from relay.replicas import Replicas
from relay.scripts import RENEW
from relay.settings import Settings
from tests.fakes import FakeConvertr, fake_convertr, fake_conveyour
from tests.procs import clean_env, relay
from tests.redis_server import free_port
from tests.redis_topologies import ClusterServers, SentinelServers
from tests.test_client_errors import test_other_errors_pass_through_as_redis_py_raised_them
from tests.test_console import (
    test_every_page_for_each_role,
    test_search_chart_and_no_console_in_openapi,
)
from tests.test_hooks import (
    receiver,
    setup,
    test_another_process_sees_a_new_subscription_at_once,
    test_received_and_delivered_notifications_are_signed,
)
from tests.test_idempotency import test_repeat_gets_the_first_answer_and_queues_nothing
from tests.test_keystore import test_revocation_empties_another_process_cache
from tests.test_worker import (
    PostLead,
    drain,
    post_lead,
    relay_settings,
    test_lead_delivered_to_both_upstreams,
    test_per_contact_order_with_two_workers,
)

__all__ = [  # fixtures, and tests collected here too
    "fake_convertr",
    "fake_conveyour",
    "post_lead",
    "receiver",
    "relay_settings",
    "setup",
    "test_another_process_sees_a_new_subscription_at_once",
    "test_every_page_for_each_role",
    "test_lead_delivered_to_both_upstreams",
    "test_other_errors_pass_through_as_redis_py_raised_them",
    "test_per_contact_order_with_two_workers",
    "test_received_and_delivered_notifications_are_signed",
    "test_repeat_gets_the_first_answer_and_queues_nothing",
    "test_revocation_empties_another_process_cache",
    "test_search_chart_and_no_console_in_openapi",
]

Topology = ClusterServers | SentinelServers


@pytest.fixture(params=["cluster", "sentinel"])
def redis_server(request: pytest.FixtureRequest) -> Topology:
    """Overrides conftest's single redis-server (see the module docstring)."""
    servers: Topology = request.getfixturevalue(f"redis_{request.param}")
    return servers


async def test_the_client_is_of_the_topology(redis: Redis, redis_server: Topology) -> None:
    """The URL picked the client: the data lands where the topology says (for the
    cluster, on the master of relay's one slot; for Sentinel, on the master it names)."""
    await redis.set("{relay}:probe", "here")
    if isinstance(redis_server, ClusterServers):
        holders = []
        for server in redis_server.servers:
            with redis_server.client(server) as node:
                if node.info("replication")["role"] == "master" and node.dbsize():
                    holders.append(server.port)
        assert len(holders) == 1  # a control key: one slot, one master
    else:
        with redis_server.data_client(redis_server.master_port()) as master:
            assert master.get("{relay}:probe") == "here"
    # INFO goes to one node (on a cluster, the master of relay's slot), not to all.
    assert (await check_version(redis)).count(".") == 2


@pytest.mark.parametrize("redis_server", ["cluster"], indirect=True)
async def test_events_spread_over_every_master_and_are_delivered(
    redis_server: ClusterServers,
    redis: Redis,
    relay_settings: Settings,
    app_client: Any,
    make_key: Any,
    fake_convertr: FakeConvertr,
) -> None:
    """With the default partitions, ingest spreads the events over every master of the
    cluster, and the worker delivers all of them (each script call in one slot)."""
    client = await app_client(relay_settings)
    key = await make_key("write:leads", "read:events")
    leads = [{"email": f"m{i}@example.com"} for i in range(30)]
    answer = await client.post("/v1/leads", json=leads, headers={"X-API-Key": key})
    assert answer.status == 202, await answer.text()
    ids = [a["id"] for a in (await answer.json())["accepted"]]
    per_master = {}
    for server in redis_server.servers:
        with redis_server.client(server) as node:
            if node.info("replication")["role"] == "master":
                events = list(node.scan_iter(match="{relay:*}:evt:*", count=1000))
                per_master[server.port] = len(events)
    assert len(per_master) == 3
    assert sum(per_master.values()) == 30
    assert all(per_master.values()), per_master  # every master holds a share
    await drain(relay_settings, redis)
    assert len(fake_convertr.requests) == 30
    for event_id in ids:
        shown = await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": key})
        assert (await shown.json())["status"] == "delivered"


async def test_a_script_redis_forgot_is_loaded_again(redis: Redis) -> None:
    """NOSCRIPT: relay's script call (relay.scripts.Bound) loads the script (on a
    cluster, SCRIPT LOAD goes to every master) and calls it again; so does redis-py's
    Script. (Not inside a pipeline: redis-py's cluster pipeline does not, and relay
    calls its scripts alone.)"""
    renew = RENEW.bind(redis)
    leases = redis_keys.inflight("crm")
    await redis.zadd(leases, {"h": 1})
    args: dict[str, str | int | float] = {"holders": '["h"]', "now_ms": 0, "lease_ms": 60_000}
    assert await renew(keys={"leases": leases}, args=args) == 1
    await redis.script_flush()
    assert await renew(keys={"leases": leases}, args=args | {"now_ms": 500}) == 1
    assert await redis.zscore(leases, "h") == 60_500
    script = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
    assert await script(keys=["{relay}:t:k"], args=["v"]) == "OK"
    await redis.script_flush()
    assert await script(keys=["{relay}:t:k"], args=["w"]) == "OK"
    assert await redis.get("{relay}:t:k") == "w"


async def test_the_cli_reads_the_topology_url(
    tmp_path: Path,
    redis_server: Topology,
    redis: Redis,
    relay_settings: Settings,
    post_lead: PostLead,
) -> None:
    """``relay status`` and ``relay events show`` in a subprocess of this tree."""
    event_id = await post_lead({"email": "cli@example.com"})
    await drain(relay_settings, redis)
    assert relay_settings.config is not None
    env = clean_env(RELAY_REDIS_URL=redis_server.url, RELAY_CONFIG=str(relay_settings.config))
    done = relay("status", "--json", cwd=tmp_path, env=env, check=False)
    assert done.returncode == 0, done.stderr
    rows = {r["destination"]: r for r in orjson.loads(done.stdout)["destinations"]}
    assert rows["convertr"]["delivered_last_hour"] == 1
    assert rows["conveyour"]["delivered_last_hour"] == 1
    shown = relay("events", "show", event_id, "--json", cwd=tmp_path, env=env)
    assert orjson.loads(shown.stdout)["status"] == "delivered"
    assert redis_server.password not in done.stdout + done.stderr + shown.stderr


async def test_replicas_confirm_ingest_keys_and_hooks(
    redis_server: Topology, make_settings: Any, app_client: Any, make_key: Any, redis: Redis
) -> None:
    """RELAY_REDIS_MIN_REPLICAS=1 works on both: WAIT behind the write, on the master
    that took it (on a cluster, the master of the written key's slot), and each
    confirmed write is on a replica when the 2xx comes."""
    settings = make_settings(redis_min_replicas=1, redis_min_replicas_timeout_ms=2000)
    client = await app_client(settings)
    key = await make_key("write:leads", "webhooks")
    headers = {"X-API-Key": key}
    once = headers | {"Idempotency-Key": "zap-1"}
    answer = await client.post("/v1/leads", json={"email": "w@example.com"}, headers=once)
    assert answer.status == 202, await answer.text()
    event_id = (await answer.json())["id"]
    # A repeat is answered from the record, written again and WAITed on (on its master).
    again = await client.post("/v1/leads", json={"email": "w@example.com"}, headers=once)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == event_id
    hook = {"target_url": "https://93.184.216.34/h", "event": "lead.received"}
    created = await client.post("/v1/hooks", json=hook, headers=headers)
    assert created.status == 201, await created.text()
    hook_id = (await created.json())["id"]
    store = KeyStore(redis, replicas=Replicas.of(settings))
    record, _ = await store.create(name="k", scopes=["write:leads"])
    await store.revoke(record.id)
    replicas = _replicas(redis_server)
    try:
        assert _on_a_replica(replicas, "EXISTS", redis_keys.event(event_id))
        assert _on_a_replica(replicas, "HEXISTS", redis_keys.HOOKS_INDEX, hook_id)
        revoked = redis_keys.key(record.digest)
        assert _on_a_replica(replicas, "HEXISTS", revoked, "revoked_at")
        gone = await client.delete(f"/v1/hooks/{hook_id}", headers=headers)
        assert gone.status == 204
        assert not _on_a_replica(replicas, "HEXISTS", redis_keys.HOOKS_INDEX, hook_id)
    finally:
        for r in replicas:
            r.close()


def _on_a_replica(replicas: list[SyncRedis], *command: str) -> bool:
    """Whether ``command`` answers 1 on the replica that holds its key's slot (the
    others answer MOVED)."""
    answers = []
    for replica in replicas:
        with contextlib.suppress(MovedError):
            answers.append(int(replica.execute_command(*command)))  # type: ignore[no-untyped-call]
    assert len(answers) == 1, answers
    return answers[0] == 1


def _replicas(servers: Topology) -> list[SyncRedis]:
    """A client of every replica of ``servers`` (read as they are, not redirected)."""
    if isinstance(servers, SentinelServers):
        ports = [s.port for s in servers.servers if s.port != servers.master_port()]
        return [servers.data_client(p) for p in ports]
    found = []
    for server in servers.servers:
        node = servers.client(server)
        if node.info("replication")["role"] == "slave":
            node.readonly()
            found.append(node)
        else:
            node.close()
    return found


@pytest.mark.parametrize("replicas", [0, 1])
@pytest.mark.parametrize("redis_server", ["sentinel"], indirect=True)
async def test_relay_follows_a_sentinel_failover(
    redis_server: SentinelServers,
    redis: Redis,
    relay_settings: Settings,
    app_client: Any,
    make_key: Any,
    fake_convertr: FakeConvertr,
    replicas: int,
) -> None:
    """After SENTINEL FAILOVER the same client writes to the new master (a few 503s
    while it moves are allowed): the worker delivers what was accepted before and after.

    The old master still takes writes until Sentinel demotes it, and loses them then;
    the client sees the switch within MASTER_CHECK_S (README, "Sentinel"). Without
    RELAY_REDIS_MIN_REPLICAS the test posts once that has passed; with 1 it posts at
    once, and a write that lands on the old master must get a 503 (its replica is
    gone), never a 202 that is then lost. A 503 undoes nothing (the write may still be
    delivered), so the client repeats with one Idempotency-Key, as it should."""
    settings = relay_settings.model_copy(update={"redis_min_replicas": replicas})
    _until_replicated(redis_server)  # an earlier failover's old master may not be back yet
    client = await app_client(settings)
    key = await make_key("write:leads")
    headers = {"X-API-Key": key}
    before = await client.post("/v1/leads?destination=convertr", json={"email": "a@example.com"},
                               headers=headers)  # fmt: skip
    assert before.status == 202, await before.text()
    old = redis_server.master_port()
    started = time.monotonic()
    new = redis_server.failover()
    assert new != old
    if not replicas:
        await asyncio.sleep(max(0.0, MASTER_CHECK_S - (time.monotonic() - started)) + 0.1)
    statuses = []
    for _ in range(100):
        after = await client.post("/v1/leads?destination=convertr",
                                  json={"email": "b@example.com"},
                                  headers={**headers, "Idempotency-Key": "b"})  # fmt: skip
        statuses.append(after.status)
        if after.status == 202:
            break
        assert after.status == 503, await after.text()
        await asyncio.sleep(0.1)
    assert statuses[-1] == 202, statuses
    await drain(settings, redis)
    assert sorted(lead["fields"]["email"] for lead in fake_convertr.leads) == [
        "a@example.com",
        "b@example.com",
    ]
    with redis_server.data_client(new) as master:
        assert master.info("replication")["role"] == "master"
        indexes = [redis_keys.events_index(p) for p in range(relay_settings.partitions)]
        assert sum(master.zcard(index) for index in indexes) == 2
    with redis_server.data_client(old) as demoted:  # what Sentinel does, seconds later
        demoted.replicaof("127.0.0.1", new)


def _until_replicated(servers: SentinelServers, timeout_s: float = 20) -> None:
    """Wait until the master has a replica that is online."""
    deadline = time.monotonic() + timeout_s
    with servers.data_client(servers.master_port()) as master:
        while master.info("replication").get("connected_slaves", 0) < 1:
            assert time.monotonic() < deadline, "the master has no replica"
            time.sleep(0.1)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://:pw-not-shown@127.0.0.1:{port}",
        "redis+sentinel://:pw-not-shown@127.0.0.1:{port}/mymaster",
    ],
)
async def test_an_unreachable_topology_is_store_unavailable(url: str) -> None:
    client = redis_client(url.format(port=free_port()))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await client.ping()
        assert "pw-not-shown" not in str(caught.value)
    finally:
        await client.aclose()


async def test_a_service_the_sentinels_do_not_know_is_store_unavailable(
    redis_sentinel: SentinelServers,
) -> None:
    url = redis_sentinel.url.replace("/mymaster?", "/nosuch?")
    client = redis_client(url)
    try:
        with pytest.raises(StoreUnavailable, match="No master found for 'nosuch'"):
            await client.ping()
    finally:
        await client.aclose()


async def test_every_sentinel_is_still_asked_after_connections_opened_at_once(
    redis_sentinel: SentinelServers,
) -> None:
    """Each new connection asks the sentinels which master is current, and redis-py
    puts the sentinel that answered first in its list by swapping positions it read
    before waiting for the answer. Connections opened at once while the first sentinel
    does not answer (down, or during a failover) each made that swap: one sentinel
    ended up twice in the list and another not at all, never asked again (its
    connections never closed)."""
    down = free_port()  # a sentinel that is down: nothing listens there
    client = redis_client(redis_sentinel.url.replace("@", f"@127.0.0.1:{down},", 1))
    try:
        await asyncio.gather(*(client.ping() for _ in range(20)))  # 20 connections at once
        asked = client.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
        ports = [s.connection_pool.connection_kwargs["port"] for s in asked]
        assert sorted(ports) == sorted([down, *(s.port for s in redis_sentinel.sentinels)])
    finally:
        await client.aclose()
