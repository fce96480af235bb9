"""Cluster: relay on a Redis Cluster of 3 masters against relay on one Redis, same run.

Ingest: a ``relay serve --no-worker`` on each, in alternating rounds of the same load
(as in the ingest section: one, the other, one... so a slow moment of the machine hits
both). Delivery: the same number of contacts queued for ``fast`` on each, then one
``relay worker --drain`` on each; events/s from the upstream's clock. Ratios are
cluster / single Redis. The masters are started as the stack's Redis is (append-only
file, everysec), without replicas, so the difference is the cluster's own: the
client's routing, and however relay's data spreads over the masters (only as far as
its hash tags let it: with one tag, one master holds it all). With ``min_replicas``
N > 0, each master has N replicas (the single Redis none) and a third ``relay serve``
on the cluster, with ``RELAY_REDIS_MIN_REPLICAS=N``, takes its turn in the ingest
rounds: the cost of WAIT on a cluster, against relay on the same masters not waiting.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis

from bench.delivery import relay_delivery
from bench.ingest import LEAD, Side
from bench.load import LoadResult, run_load
from bench.servers import BenchError, Proc, Procs, Stack, free_port, start_redis

__all__ = ["ClusterResult", "cluster_port", "run_cluster", "start_cluster"]

#: Slots of a Redis Cluster.
_SLOTS = 16384
#: A cluster node talks to the others on its port + 10000.
_BUS_OFFSET = 10000
#: How long the masters may take to agree that the cluster is up.
_AGREE_S = 30.0


@dataclass(frozen=True)
class ClusterResult:
    masters: int
    connections: int
    round_s: float
    single: Side
    cluster: Side
    events: int
    concurrency: int
    single_rate: float  #: events/s delivered, one Redis
    cluster_rate: float  #: events/s delivered, the cluster
    #: Masters of the cluster that hold some of relay's keys after the run.
    masters_used: int
    #: relay serve on the cluster with RELAY_REDIS_MIN_REPLICAS=N (N, its rounds)
    waiting: tuple[int, Side] | None = None

    @property
    def wait_ratio(self) -> float | None:
        """req/s on the cluster waiting for replicas / without (same masters, replicas)."""
        return None if self.waiting is None else self.waiting[1].rps / self.cluster.rps

    @property
    def ingest_ratio(self) -> float:
        return self.cluster.rps / self.single.rps

    @property
    def delivery_ratio(self) -> float:
        return self.cluster_rate / self.single_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "masters": self.masters,
            "masters_used": self.masters_used,
            "connections": self.connections,
            "round_s": self.round_s,
            "ingest_single": self.single.to_dict(),
            "ingest_cluster": self.cluster.to_dict(),
            "ingest_ratio": round(self.ingest_ratio, 3),
            "events": self.events,
            "concurrency": self.concurrency,
            "delivery_single_events_per_s": round(self.single_rate, 1),
            "delivery_cluster_events_per_s": round(self.cluster_rate, 1),
            "delivery_ratio": round(self.delivery_ratio, 3),
            **(
                {}
                if self.waiting is None or self.wait_ratio is None
                else {
                    "min_replicas": self.waiting[0],
                    "ingest_cluster_waiting": self.waiting[1].to_dict(),
                    "wait_ratio": round(self.wait_ratio, 3),
                }
            ),
        }


def start_cluster(
    procs: Procs, masters: int, *, replicas: int = 0
) -> tuple[list[Proc], list[int], str]:
    """``masters`` redis-servers joined into a cluster, slots split evenly, each with
    ``replicas`` replicas: their processes, the masters' ports and the
    ``redis+cluster://`` URL naming the masters."""
    cluster = ["--cluster-enabled", "yes"]
    started = [
        start_redis(procs, name="redis-cluster", args=cluster, port=cluster_port())
        for _ in range(masters * (1 + replicas))
    ]
    ports = [port for _, port in started]
    clients = [Redis(host="127.0.0.1", port=port, decode_responses=True) for port in ports]
    try:
        for port in ports[1:]:
            clients[0].cluster("MEET", "127.0.0.1", port)
        share = _SLOTS // masters
        for n, client in enumerate(clients[:masters]):
            end = _SLOTS if n == masters - 1 else (n + 1) * share
            client.cluster("ADDSLOTS", *range(n * share, end))
        _until("the nodes to meet", lambda: all(
            int(c.cluster("INFO")["cluster_known_nodes"]) == len(clients) for c in clients
        ))  # fmt: skip
        ids = [c.cluster("MYID") for c in clients[:masters]]
        for n, client in enumerate(clients[masters:]):
            client.cluster("REPLICATE", ids[n % masters])
        _until("the cluster to come up", lambda: all(
            c.cluster("INFO")["cluster_state"] == "ok" for c in clients
        ))  # fmt: skip
        _until("the replicas to sync", lambda: all(
            c.info("replication").get("master_link_status") == "up" for c in clients[masters:]
        ))  # fmt: skip
    finally:
        for client in clients:
            client.close()
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports[:masters])
    return [proc for proc, _ in started], ports[:masters], f"redis+cluster://{hosts}"


def _until(what: str, test: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _AGREE_S
    while not test():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {_AGREE_S:.0f} s waiting for {what}")
        time.sleep(0.05)


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    while True:
        port = free_port()
        if port + _BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + _BUS_OFFSET))
            except OSError:
                continue
        return port


def _masters_used(ports: list[int]) -> int:
    used = 0
    for port in ports:
        with Redis(host="127.0.0.1", port=port) as node:
            used += bool(node.dbsize())
    return used


def run_cluster(
    procs: Procs,
    stack: Stack,
    *,
    masters: int,
    connections: int,
    round_s: float,
    rounds: int,
    warmup_s: float,
    use_wrk: bool,
    events: int,
    concurrency: int,
    min_replicas: int = 0,
) -> ClusterResult:
    nodes, ports, url = start_cluster(procs, masters, replicas=min_replicas)
    api = stack.start_api("relay-serve-cluster", redis_url=url)
    targets = {"single": stack.api, "cluster": api}
    if min_replicas:
        waits = {"RELAY_REDIS_MIN_REPLICAS": str(min_replicas)}
        targets["waiting"] = stack.start_api("relay-serve-cluster-wait", redis_url=url,
                                             extra_env=waits)  # fmt: skip

    def load(name: str, seconds: float) -> LoadResult:
        target = targets[name]
        return run_load(
            procs, target.url("/v1/leads"), LEAD, target.auth, connections=connections,
            duration_s=seconds, use_wrk=use_wrk,
        )  # fmt: skip

    for name in targets:
        if warmup_s > 0:
            load(name, warmup_s)
    measured: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name in targets:
            measured[name].append(load(name, round_s))
            for target in targets.values():
                target.proc.check_alive()
    single_rate, _, _ = relay_delivery(procs, stack, events=events, concurrency=concurrency)
    cluster_rate, _, _ = relay_delivery(
        procs, stack, events=events, concurrency=concurrency, api=api, redis_url=url
    )
    used = _masters_used(ports)
    for target in targets.values():
        if target is not stack.api:
            procs.stop(target.proc)
    for node in nodes:
        procs.stop(node)
    return ClusterResult(
        masters=masters,
        connections=connections,
        round_s=round_s,
        single=Side(measured["single"]),
        cluster=Side(measured["cluster"]),
        events=events,
        concurrency=concurrency,
        single_rate=single_rate,
        cluster_rate=cluster_rate,
        masters_used=used,
        waiting=(min_replicas, Side(measured["waiting"])) if min_replicas else None,
    )
