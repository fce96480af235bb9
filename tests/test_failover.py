"""No acknowledged lead lost when Redis fails over under load (RELAY_REDIS_MIN_REPLICAS).

Each test starts a topology of its own (it breaks it): a 3-master Redis Cluster with a
replica each and a short ``cluster-node-timeout``, or one master, one replica and
three sentinels. Leads are posted without pause and delivered to a fake Convertr
while a master is failed over (``CLUSTER FAILOVER``) or killed (kill -9); the old
master is then started again (it comes back as a replica, so that ingest that waits
for one replica can go on). The figures are printed (``pytest -s``): leads accepted,
delivered, lost, 503 answers and the longest run of them (see :mod:`tests.failover`).
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay import redis_keys
from relay.api import create_app
from relay.connect import redis_client
from relay.errors import NotReplicated
from relay.keystore import KeyStore
from relay.models import Lead
from relay.partitions import contact_partition
from relay.replicas import Replicas
from relay.store import contact_key
from tests.conftest import AppClient
from tests.events import PARTITIONS
from tests.failover import Outcome, kill_and_rejoin, settings_for, under_load
from tests.fakes import FakeConvertr, fake_convertr
from tests.redis_topologies import ClusterServers, SentinelServers, running

__all__ = ["fake_convertr"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterServers]:
    """A cluster of this test's own, whose nodes notice a dead one after 1 s."""
    servers = ClusterServers(tmp_path / "cluster", password="cluster-secret", node_timeout_ms=1000)
    with running(servers):
        yield servers


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelServers]:
    servers = SentinelServers(
        tmp_path / "sentinel",
        service="mymaster",
        password="data-secret",
        sentinel_password="sentinel-secret",
    )
    with running(servers):
        yield servers


Run = Callable[[str, int, Callable[[], dict[str, float] | None]], Awaitable[Outcome]]


@pytest.fixture
def load(fake_convertr: FakeConvertr, aiohttp_client: AppClient, tmp_path: Path) -> Run:
    """``await load(url, min_replicas, fail)``: tests.failover.under_load on ``url``."""

    async def run(url: str, replicas: int, fail: Callable[[], dict[str, float] | None]) -> Outcome:
        settings = settings_for(url, fake_convertr, tmp_path, replicas=replicas)
        return await under_load(settings, fake_convertr, aiohttp_client, fail)

    return run


async def test_cluster_failover_loses_no_accepted_lead(cluster: ClusterServers, load: Run) -> None:
    replica = cluster.replica_of(cluster.master_of(redis_keys.events_index(0)))
    outcome = await load(cluster.url, 1, lambda: cluster.failover(replica))
    print(outcome.report("\ncluster, CLUSTER FAILOVER, MIN_REPLICAS=1"))
    assert not outcome.other
    assert not outcome.unclosed
    assert not outcome.lost
    assert cluster.master_of(redis_keys.events_index(0)) is replica


async def test_cluster_master_killed_loses_no_accepted_lead(
    cluster: ClusterServers, load: Run
) -> None:
    master = cluster.master_of(redis_keys.events_index(0))
    outcome = await load(cluster.url, 1, lambda: kill_and_rejoin(
        lambda: cluster.kill_master(master), cluster.rejoin
    ))  # fmt: skip
    print(outcome.report("\ncluster, kill -9 of a master, MIN_REPLICAS=1"))
    assert not outcome.other
    assert not outcome.unclosed
    assert not outcome.lost
    assert cluster.master_of(redis_keys.events_index(0)) is not master
    with cluster.client(master) as node:
        assert node.info("replication")["role"] == "slave"  # back, as a replica


@pytest.mark.parametrize("replicas", [1, 0])
async def test_sentinel_master_killed(replicas: int, sentinel: SentinelServers, load: Run) -> None:
    """With MIN_REPLICAS=1 nothing accepted is lost; with 0 what is lost is reported
    (the test asserts only that the figures add up: a kill -9 loses what the replica
    had not yet received, often nothing on loopback)."""
    fail = functools.partial(kill_and_rejoin, sentinel.kill_master, sentinel.rejoin)
    outcome = await load(sentinel.url, replicas, fail)
    print(outcome.report(f"\nsentinel, kill -9 of the master, MIN_REPLICAS={replicas}"))
    assert not outcome.other
    assert not outcome.unclosed  # no connection dropped unclosed (to a sentinel, say)
    # kill_master returned only once every sentinel named another master. It is not
    # asserted that the old one is not master again at the end: on a starved machine
    # the sentinels may fail over back to it (seen once, with 11.7 s of 503s), and
    # that is Sentinel doing its job; what is asserted is what the clients got.
    delivered = outcome.accepted & outcome.delivered
    assert len(outcome.accepted) == len(delivered) + len(outcome.lost)
    if replicas:
        assert not outcome.lost


#: The index of the partition of contact a@example.com (where its lead is written).
_A_EVENTS = redis_keys.events_index(
    contact_partition(contact_key(Lead(email="a@example.com")), PARTITIONS)
)


async def test_cluster_wait_is_on_the_master_that_took_the_write(
    cluster: ClusterServers, fake_convertr: FakeConvertr, aiohttp_client: AppClient,
    tmp_path: Path,
) -> None:  # fmt: skip
    """With the replica of the master that owns the written keys (the partition of the
    lead's contact) stopped (SIGSTOP), a
    write is 503 (NotReplicated), though the other masters' replicas are up: WAIT went
    to that master (a WAIT on another master would count that one's replica and answer
    202: tried). Continued, it confirms."""
    settings = settings_for(cluster.url, fake_convertr, tmp_path, replicas=1)
    settings = settings.model_copy(update={"redis_min_replicas_timeout_ms": 300})
    redis = redis_client(cluster.url)
    client: TestClient[Any, Any] | None = None
    stopped = cluster.replica_of(cluster.master_of(_A_EVENTS))
    try:
        store = KeyStore(redis, replicas=Replicas.of(settings))
        record, key = await store.create(name="k", scopes=["write:leads"])
        client = await aiohttp_client(create_app(settings, redis=redis))
        assert stopped.proc is not None
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        try:
            answer = await client.post("/v1/leads", json={"email": "a@example.com"},
                                       headers={"X-API-Key": key})  # fmt: skip
            assert answer.status == 503, await answer.text()
            assert "0 Redis replica(s) of the 1 required" in (await answer.json())["detail"]
            if cluster.master_of(redis_keys.key(record.digest)) is cluster.master_of(_A_EVENTS):
                with pytest.raises(NotReplicated):
                    await store.revoke(record.id)
        finally:
            os.kill(stopped.proc.pid, signal.SIGCONT)
        answer = await client.post("/v1/leads", json={"email": "b@example.com"},
                                   headers={"X-API-Key": key})  # fmt: skip
        assert answer.status == 202, await answer.text()
    finally:
        if client is not None:
            await client.close()
        await redis.aclose()
