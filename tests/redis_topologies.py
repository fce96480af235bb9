"""A Redis Cluster and a Sentinel-managed Redis for tests, of real redis-server processes
on free loopback ports (the binary :class:`~tests.redis_server.RedisServer` finds).

Both are built by hand from Python (CLUSTER MEET / ADDSLOTS / REPLICATE; sentinel
config files), so they need no redis-cli, and both wait until the servers agree
before they are handed out. ``url`` is what ``RELAY_REDIS_URL`` would say.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from bench.cluster import cluster_port
from tests.redis_server import RedisServer

__all__ = ["ClusterServers", "SentinelServers", "running"]

#: Slots of a Redis Cluster.
_SLOTS = 16384
#: How long the servers may take to agree (a cluster's gossip, sentinels' hellos).
_AGREE_S = 30.0


def _until(what: str, test: Callable[[], bool], timeout_s: float = _AGREE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(RedisError, OSError):
            if test():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _hosts(servers: list[RedisServer]) -> str:
    """``host:port,host:port...`` as a URL lists them."""
    return ",".join(f"127.0.0.1:{s.port}" for s in servers)


class ClusterServers:
    """A Redis Cluster: ``masters`` masters with one replica each, slots split evenly."""

    def __init__(
        self, data_dir: Path, *, masters: int = 3, password: str = "", node_timeout_ms: int = 2000
    ) -> None:
        self.password = password
        # nodes.conf (the node's own record of the cluster) goes to the node's --dir.
        # A node unreachable for node_timeout_ms is failing; its replica takes over soon
        # after (a failover test keeps it short).
        args = ("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms))
        self.servers = [
            RedisServer(
                data_dir / f"node{n}", port=cluster_port(), password=password or None, args=args
            )
            for n in range(masters * 2)
        ]
        self.masters = masters

    def __repr__(self) -> str:
        return f"<ClusterServers {_hosts(self.servers)}>"

    @property
    def url(self) -> str:
        """Every node as a startup node; the password, if any."""
        creds = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{creds}{_hosts(self.servers)}"

    def client(self, server: RedisServer) -> SyncRedis:
        return SyncRedis(port=server.port, password=self.password or None, decode_responses=True)

    def start(self) -> None:
        for server in self.servers:
            server.start()
        clients = [self.client(s) for s in self.servers]
        try:
            self._join(clients)
        finally:
            for c in clients:
                c.close()

    def _join(self, clients: list[SyncRedis]) -> None:
        first = clients[0]
        for server in self.servers[1:]:
            first.cluster("MEET", "127.0.0.1", server.port)
        share = _SLOTS // self.masters
        for n, c in enumerate(clients[: self.masters]):
            end = _SLOTS if n == self.masters - 1 else (n + 1) * share
            c.cluster("ADDSLOTS", *range(n * share, end))
        ids = [c.cluster("MYID") for c in clients]
        # A replica must know its master before it can follow it.
        _until("the nodes to meet", lambda: all(
            int(c.cluster("INFO")["cluster_known_nodes"]) == len(clients) for c in clients
        ))  # fmt: skip
        for n, c in enumerate(clients[self.masters :]):
            c.cluster("REPLICATE", ids[n])
        _until("cluster_state:ok on every node", lambda: all(
            c.cluster("INFO")["cluster_state"] == "ok" for c in clients
        ))  # fmt: skip
        _until("the replicas to sync", lambda: all(
            c.info("replication").get("master_link_status") == "up"
            for c in clients[self.masters :]
        ))  # fmt: skip

    def master_of(self, key: str) -> RedisServer:
        """The master that owns ``key``'s slot now (as a live node sees it)."""
        with self.client(next(s for s in self.servers if s.proc)) as node:
            slot = int(node.cluster("KEYSLOT", key))
            for start, end, (_, port, *_), *_ in node.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return next(s for s in self.servers if s.port == int(port))
        raise LookupError(f"no master owns slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        with self.client(master) as node:
            port = int(node.info("replication")["slave0"]["port"])
        return next(s for s in self.servers if s.port == port)

    def failover(self, replica: RedisServer) -> None:
        """CLUSTER FAILOVER on ``replica`` (graceful: its master stops taking writes
        until the replica has them all); returns once every node says it is master of
        the slots, its old master being its replica."""
        with self.client(replica) as node:
            node.cluster("FAILOVER")
        self._until_master(replica, every=self.servers)

    def kill_master(self, master: RedisServer) -> RedisServer:
        """kill -9 of ``master``, returned once the others promoted its replica."""
        replica = self.replica_of(master)
        master.kill()
        self._until_master(replica, every=[s for s in self.servers if s is not master])
        return master

    def rejoin(self, server: RedisServer) -> None:
        """Start a killed node again: it rejoins as a replica of who took its place."""
        server.start()
        with self.client(server) as node:
            _until("the node to follow its new master", lambda: (
                node.info("replication").get("master_link_status") == "up"
            ))  # fmt: skip

    def _until_master(self, new: RedisServer, *, every: list[RedisServer]) -> None:
        clients = [self.client(s) for s in every]
        try:
            _until("the failover", lambda: all(
                c.cluster("INFO")["cluster_state"] == "ok"
                and "master" in c.cluster("NODES")[f"127.0.0.1:{new.port}"]["flags"].split(",")
                for c in clients
            ))  # fmt: skip
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for server in self.servers:
            server.kill()  # no data worth an AOF flush; every process ends


class SentinelServers:
    """One master, one replica, three sentinels watching them as ``service``.

    The data servers and the sentinels have passwords of their own, so a URL that gave
    either to the wrong side fails."""

    def __init__(
        self,
        data_dir: Path,
        *,
        service: str,
        password: str,
        sentinel_password: str,
    ) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.data_dir = data_dir
        master = RedisServer(data_dir / "master", password=password)
        replica = RedisServer(
            data_dir / "replica",
            password=password,
            args=("--replicaof", "127.0.0.1", str(master.port)),
        )
        self.servers = [master, replica]
        self.sentinels = [
            RedisServer(
                data_dir / f"sentinel{n}",
                password=sentinel_password,
                config=data_dir / f"sentinel{n}.conf",
                args=("--sentinel",),
            )
            for n in range(3)
        ]

    def __repr__(self) -> str:
        return f"<SentinelServers {self.service} at {_hosts(self.sentinels)}>"

    @property
    def url(self) -> str:
        return (
            f"redis+sentinel://:{self.password}@{_hosts(self.sentinels)}/{self.service}"
            f"?sentinel_password={self.sentinel_password}"
        )

    def sentinel(self, n: int = 0) -> SyncRedis:
        return SyncRedis(
            port=self.sentinels[n].port, password=self.sentinel_password, decode_responses=True
        )

    def data_client(self, port: int) -> SyncRedis:
        """A client of the master or the replica, by port."""
        return SyncRedis(port=port, password=self.password, decode_responses=True)

    def master_port(self, n: int = 0) -> int:
        """The master's port, as sentinel ``n`` sees it now."""
        with self.sentinel(n) as s:
            _, port = s.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)

    def start(self) -> None:
        master, replica = self.servers
        master.start()
        replica.start()
        for sentinel in self.sentinels:
            assert sentinel.config is not None
            sentinel.config.write_text(
                f"sentinel monitor {self.service} 127.0.0.1 {master.port} 2\n"
                f"sentinel auth-pass {self.service} {self.password}\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
            sentinel.start()
        self.wait_agreed(master.port)

    def wait_agreed(self, master_port: int) -> None:
        """Until every sentinel names ``master_port``, sees the two others and a replica
        whose link is up."""

        def agreed(n: int) -> bool:
            with self.sentinel(n) as s:
                state = s.sentinel_master(self.service)
                replicas = s.sentinel_slaves(self.service)
                return (
                    int(state["port"]) == master_port
                    and int(state["num-other-sentinels"]) == 2
                    and not state["is_sdown"]
                    and any(r["master-link-status"] == "ok" and not r["is_sdown"] for r in replicas)
                )

        _until("the sentinels to agree", lambda: all(agreed(n) for n in range(3)))

    def failover(self) -> int:
        """A graceful failover (SENTINEL FAILOVER); the new master's port, once every
        sentinel names it and it says it is master. The old master is not waited for:
        Sentinel demotes it only at its next INFO (up to ~10 s), and until then it still
        takes writes, which a client must not send it."""
        old = self.master_port()
        with self.sentinel() as s:
            s.execute_command("SENTINEL FAILOVER", self.service)
        _until("the failover", lambda: all(self.master_port(n) != old for n in range(3)))
        new = self.master_port()
        with self.data_client(new) as client:
            _until("the new master", lambda: client.info("replication")["role"] == "master")
        return new

    def kill_master(self) -> RedisServer:
        """kill -9 of the master; the killed server, once every sentinel names the
        replica and it says it is master."""
        old = self.master_port()
        master = next(s for s in self.servers if s.port == old)
        master.kill()
        _until("the failover", lambda: all(self.master_port(n) != old for n in range(3)))
        with self.data_client(self.master_port()) as client:
            _until("the new master", lambda: client.info("replication")["role"] == "master")
        return master

    def rejoin(self, server: RedisServer) -> None:
        """Start a killed master again, as a replica of the new one. (The sentinels
        would make it one themselves, but only once they saw it claim to be master for
        a while: 10 to 30 s later. Until then it takes no write of relay's: they name
        the new master.)"""
        server.start()
        with self.data_client(server.port) as client:
            client.replicaof("127.0.0.1", self.master_port())
            _until("the old master to follow the new one", lambda: (
                client.info("replication").get("master_link_status") == "up"
            ))  # fmt: skip

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.kill()


@contextlib.contextmanager
def running(servers: ClusterServers | SentinelServers) -> Iterator[str]:
    """``servers`` started (its URL), every process killed afterwards, even when the
    start failed half way."""
    try:
        servers.start()
        yield servers.url
    finally:
        servers.stop()
