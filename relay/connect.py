"""Open the Redis that settings name: ``RELAY_REDIS_URL``, or the embedded server.

``RELAY_REDIS_URL`` (read by :mod:`relay.redis_url`) names one Redis, a Redis
Cluster or a Sentinel-managed master; each gets the client of its kind, with the
same timeouts, retries and error translation.

The client is the one place where Redis trouble becomes
:class:`~relay.errors.StoreUnavailable`: a command, a pipeline, a script or a
pub/sub call that Redis cannot serve now (down, restarting, loading its data,
a replica after a failover, out of memory, no connection free in the pool, a
cluster that is down or whose map is changing, no master a sentinel can name)
raises it, ``from`` redis-py's error and with its text. Everything else that
Redis answers (WRONGTYPE, BUSYGROUP, NOGROUP, a script's error) rises as
redis-py raised it: those are for the caller to handle, or bugs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, cast

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.cluster import (
    ClusterNode,
    ClusterPipeline,
    ClusterPubSub,
    PipelineCommand,
    RedisCluster,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterError,
    ConnectionError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeout
from redis.typing import EncodableT

from relay import redis_keys
from relay.embedded import COMPACT_HASH_VALUE, EmbeddedRedis
from relay.errors import StoreUnavailable
from relay.redis_url import RedisTarget, parse_redis_url
from relay.settings import Settings

__all__ = [
    "MIN_REDIS_VERSION",
    "RelayCluster",
    "RelayRedis",
    "check_version",
    "home_node",
    "memory_hint",
    "redis_client",
    "redis_for",
    "server_time_ms",
]

P = ParamSpec("P")
T = TypeVar("T")

#: XAUTOCLAIM, GETDEL, ZRANGE BYSCORE… first came with Redis 6.2.
MIN_REDIS_VERSION = (6, 2)
#: A Redis that does not answer within this long is "unavailable" (the API answers 503).
SOCKET_TIMEOUT_S = 5.0
#: Times a command is retried on a fresh connection after the old one dropped.
RECONNECT_RETRIES = 4
#: How often a Sentinel client asks the sentinels which master is current (besides at
#: every new connection): the longest a switch of master can go unseen.
MASTER_CHECK_S = 1.0
#: Times RelayCluster.on_master sends its commands, following MOVED (a failover).
_ON_MASTER_TRIES = 3
#: Connections one client keeps at most. A command that finds them all busy waits
#: for one (up to SOCKET_TIMEOUT_S) instead of failing: redis-py's own pool raises
#: "Too many connections" past 100, which a burst of requests turned into 503s.
MAX_CONNECTIONS = 128

try:
    from redis.connection import HiredisRespSerializer

    _HIREDIS: HiredisRespSerializer | None = HiredisRespSerializer()  # type: ignore[no-untyped-call,unused-ignore]
except ImportError:  # redis-py without hiredis: its own Python packing
    _HIREDIS = None


def redis_client(url: str) -> Redis:
    """A client as every part of relay expects it: text replies, bounded waits.

    ``url`` is any form :mod:`relay.redis_url` reads: one Redis, a Redis Cluster
    (a :class:`RelayCluster`, typed ``Redis`` for the callers: every command relay
    sends exists on both with the same arguments) or the master a Sentinel names.
    A command that meets a dropped connection (Redis restarted; the pool's
    connections went stale; a failover moved the master) is sent again on a fresh
    one, a few times with a short backoff, before the error reaches the caller as
    StoreUnavailable (503 at the API, a pending entry at the worker). At most
    MAX_CONNECTIONS are open (per node on a cluster); past that a command waits its
    turn.
    """
    target = parse_redis_url(url)
    if target.kind == "cluster":
        return cast(Redis, _cluster_client(target))
    if target.kind == "sentinel":
        return _sentinel_client(target)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT_S, **_connection_options()
    )
    _pack_with_hiredis(pool)
    return RelayRedis.from_pool(pool)


def _connection_options() -> dict[str, Any]:
    """What every connection to a Redis server is opened with, whatever the topology."""
    return {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": 10,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RECONNECT_RETRIES),
        "retry_on_error": [ConnectionError],
    }


def _tls_options(target: RedisTarget) -> dict[str, Any]:
    return {"ssl": True, **target.ssl} if target.tls else {}


def _cluster_client(target: RedisTarget) -> RelayCluster:
    """Every node named is a startup node (any one that answers gives the map)."""
    options = _connection_options()
    del options["retry_on_error"]  # the cluster client retries connection errors itself
    return RelayCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        max_connections=MAX_CONNECTIONS,
        username=target.username,
        password=target.password,
        **_tls_options(target),
        **options,
    )


def _sentinel_client(target: RedisTarget) -> RelayRedis:
    """The master that the sentinels name now, asked again at every new connection and
    at least every MASTER_CHECK_S (:class:`_SentinelPool`)."""
    tls = _tls_options(target)
    sentinels = _Sentinel(
        list(target.hosts),
        sentinel_kwargs={
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
            "decode_responses": True,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            **tls,
        },
    )
    client = sentinels.master_for(
        target.service,
        redis_class=RelayRedis,
        connection_pool_class=_SentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT_S,
        **tls,
        **_connection_options(),
    )
    _pack_with_hiredis(client.connection_pool)
    return cast(RelayRedis, client)


class _Sentinel(Sentinel):
    """redis-py's Sentinel, asking the sentinels which master is current one question
    at a time.

    redis-py's ``discover_master`` puts the sentinel that answered first in its list
    by swapping positions it read before waiting for the answer. Every new connection
    asks, so connections opened at once while the first sentinel does not answer (it
    is down, or says the master is, in a failover) each swapped: one sentinel ended up
    twice in the list and another not at all, never asked again and its connections
    never closed. One at a time, each question starts from the list the last one left.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking = asyncio.Lock()

    async def discover_master(self, service_name: str) -> Any:
        async with self._asking:
            return await super().discover_master(service_name)


class _SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool, waiting for a free connection like the single-Redis one, that
    asks the sentinels which master is current at most every MASTER_CHECK_S.

    redis-py asks only when it opens a connection; but after a graceful failover the
    old master goes on taking writes until Sentinel demotes it (at its next INFO, up
    to ~10 s later) and drops its clients, and what it took then is lost. Once the
    sentinels name another master, every connection (pub/sub and blocked reads too)
    is closed, so each command goes again, to the new master, by the client's retry.
    """

    _checked_at = 0.0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= MASTER_CHECK_S:
            self._checked_at = now
            before = self.master_address
            await self.get_master_address()  # type: ignore[no-untyped-call]
            if before is not None and self.master_address != before:
                await self.disconnect(inuse_connections=True)
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]


def _pack_with_hiredis(pool: ConnectionPool) -> None:
    if _HIREDIS is not None and not issubclass(pool.connection_class, _HiredisPacking):
        # Whatever the URL chose (TCP, TLS, unix socket, Sentinel's), commands packed in C.
        pool.connection_class = type(
            pool.connection_class.__name__, (_HiredisPacking, pool.connection_class), {}
        )


class _HiredisPacking:
    """Commands packed by hiredis, as redis-py's own sync client does, not in Python:
    a group commit's script call names a few hundred keys, and redis-py's asyncio
    connection packs each argument in Python (about 3x slower)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        assert _HIREDIS is not None
        packed: list[bytes] = _HIREDIS.pack(*args)
        return packed


#: What redis-py raises when Redis cannot serve a call now. A ConnectionError is also
#: a refused or dropped connection, no connection free in the pool within its wait
#: ("No connection available."), and Redis loading its data at start (BusyLoadingError).
_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    RedisTimeout,
    OSError,  # a socket's own error, should redis-py let one through
    ReadOnlyError,  # a replica, after a failover
    OutOfMemoryError,  # a write refused at maxmemory
    ClusterError,  # CLUSTERDOWN, or redirections that did not settle ("TTL exhausted")
    TryAgainError,
    SlotNotCoveredError,  # the client's map has a hole (a failover under way)
    RedisClusterUnreachableError,  # no node answered
    # A Sentinel that names no master: MasterNotFoundError is a ConnectionError.
)
#: The same said by an error reply that redis-py leaves a plain ResponseError: one
#: that has no class of its own (a script running too long, writes refused because
#: the last save failed or for want of replicas), or a command's error quoted in the
#: error of the script that called it (Redis 6: "Error running script (call to
#: f_...): @user_script:1: @user_script: 1: -OOM command not allowed ...").
_UNAVAILABLE_REPLY = re.compile(
    r"(?:^|: -)(?:OOM|READONLY|LOADING|BUSY|MISCONF|NOREPLICAS|MASTERDOWN|CLUSTERDOWN|TRYAGAIN"
    r"|UNBLOCKED) "
)

#: Set while a call of the client is under way in this task: an error is translated
#: once, where it leaves the client, and never inside it, where redis-py's reconnect
#: Retry must still see its own ConnectionError (a pub/sub resubscribes from within
#: a reconnect; a pipeline loads its scripts from within ``execute``).
_IN_CALL: ContextVar[bool] = ContextVar("relay_redis_call", default=False)


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if not isinstance(exc, ResponseError):
        return False
    code = getattr(exc, "status_code", None)  # redis-py 8; the text may have lost it
    return _UNAVAILABLE_REPLY.search(f"{code} {exc}" if code else str(exc)) is not None


def _translated(
    call: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``call``, raising StoreUnavailable (from redis-py's error) when Redis cannot
    serve it now."""

    @functools.wraps(call)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        if _IN_CALL.get():
            return await call(*args, **kwargs)
        token = _IN_CALL.set(True)
        try:
            return await call(*args, **kwargs)
        except Exception as exc:
            if not _unavailable(exc):
                raise
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            _IN_CALL.reset(token)

    return translated


class _Pipeline(Pipeline):
    """redis-py's pipeline whose round trips raise StoreUnavailable."""

    execute = _translated(Pipeline.execute)
    immediate_execute_command = _translated(Pipeline.immediate_execute_command)


class _PubSub(PubSub):
    """redis-py's pub/sub whose commands and reads raise StoreUnavailable."""

    execute_command = _translated(PubSub.execute_command)
    parse_response = _translated(PubSub.parse_response)


class RelayRedis(Redis):
    """redis-py's client whose calls raise StoreUnavailable when Redis cannot serve
    them now. Script calls (``evalsha``) go through ``execute_command`` too; a NOSCRIPT
    is not translated: it reaches the caller (relay.scripts.Bound, redis-py's Script),
    which loads the script and calls it again."""

    execute_command = _translated(Redis.execute_command)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    def pubsub(self, **kwargs: Any) -> PubSub:
        return _PubSub(self.connection_pool, event_dispatcher=self._event_dispatcher, **kwargs)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if isinstance(self.connection_pool, SentinelConnectionPool):
            await self.connection_pool.sentinel_manager.aclose()  # its clients of the sentinels


class _ClusterPipeline(ClusterPipeline):
    """redis-py's cluster pipeline whose round trips raise StoreUnavailable. With
    ``transaction=True`` it is MULTI/EXEC on the node of the keys' one slot (every
    key of relay has the hash tag ``{relay}``)."""

    execute = _translated(ClusterPipeline.execute)


class _ClusterPubSub(ClusterPubSub):
    """redis-py's cluster pub/sub whose commands and reads raise StoreUnavailable.

    A channel is subscribed on the node that owns its slot (relay's channels carry
    ``{relay}``); a PUBLISH anywhere in a cluster reaches every node, so it is heard.
    Sharded pub/sub (SSUBSCRIBE) would keep messages on one shard, but it needs Redis 7.
    """

    execute_command = _translated(ClusterPubSub.execute_command)
    parse_response = _translated(ClusterPubSub.parse_response)


class RelayCluster(RedisCluster):
    """redis-py's Redis Cluster client whose calls raise StoreUnavailable when the
    cluster cannot serve them now (the cluster's own retries, redirections and map
    refreshes come first)."""

    execute_command = _translated(RedisCluster.execute_command)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            raise ValueError("a cluster pipeline takes no shard_hint")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]

    @_translated
    async def on_master(self, key: str, commands: list[tuple[EncodableT, ...]]) -> list[Any]:
        """The answers to ``commands``, sent together on one connection to the master
        that owns ``key``'s slot (so a WAIT among them counts the writes before it: see
        relay.replicas); the first error answer is raised.

        A MOVED (the slot has another master now: a failover, a resharding) means
        Redis ran nothing of ``commands`` that needed the slot (a MULTI is aborted):
        the map is patched and they go again, to the new master, a few times.
        """
        for attempt in range(_ON_MASTER_TRIES):
            if self._initialize_due():  # a refresh asked for after an error, or none yet
                await self.initialize()
            node = self.get_node_from_key(key)
            if node is None:
                raise SlotNotCoveredError(f"no master holds the slot of {key!r} now")
            sent = [PipelineCommand(n, *command) for n, command in enumerate(commands)]
            await node.execute_pipeline(sent)
            error = next((c.result for c in sent if isinstance(c.result, Exception)), None)
            if error is None:
                return [c.result for c in sent]
            if isinstance(error, MovedError) and attempt + 1 < _ON_MASTER_TRIES:
                await self.nodes_manager.move_slot(error)
                continue
            if isinstance(error, ConnectionError | RedisTimeout | MovedError) or _unavailable(
                error
            ):
                # As redis-py's own commands do: the next call reads the map again. (A
                # WAIT on a master that a failover turns into a replica is answered
                # UNBLOCKED: the write may be on the new master, unconfirmed: a 503.)
                self._request_refresh(last_failed_node_name=node.name)
            raise error
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def pubsub(
        self,
        node: ClusterNode | None = None,
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> ClusterPubSub:
        return _ClusterPubSub(self, node=node, host=host, port=port, **kwargs)


async def home_node(redis: Redis) -> dict[str, Any]:
    """``target_nodes=`` for a server command (INFO, CONFIG) on a cluster: the master of
    relay's slot, where its data is; nothing to add on a single Redis."""
    if not isinstance(redis, RedisCluster):
        return {}
    return {"target_nodes": await _home(redis)}


async def server_time_ms(redis: Redis) -> int:
    """Redis's clock, which the scripts date things by (on a cluster, the clock of the
    master of relay's slot, where they run)."""
    seconds, micros = await redis.time(**await home_node(redis))
    return int(seconds) * 1000 + int(micros) // 1000


@_translated
async def _home(cluster: RedisCluster) -> ClusterNode:
    if cluster._initialize:  # the map is read at the first command; this may be it
        await cluster.initialize()
    node = cluster.get_node_from_key(redis_keys.KEYS_INDEX)
    if node is None:
        raise SlotNotCoveredError("no master holds relay's slot now")
    return node


async def check_version(redis: Redis) -> str:
    """The server's version; StoreUnavailable when it is older than 6.2 or does not answer."""
    try:
        info = await redis.info("server", **await home_node(redis))
    except StoreUnavailable as exc:
        raise StoreUnavailable(f"cannot reach Redis: {exc}") from exc
    version = str(info.get("redis_version", "0"))
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS_VERSION:
        raise StoreUnavailable(f"Redis {version} is too old: relay needs 6.2 or newer")
    return version


async def memory_hint(redis: Redis) -> str | None:
    """A sentence for the log when Redis keeps event records as hash tables (twice
    their listpack size), or None (compact, or CONFIG is not allowed here)."""
    try:
        found = await redis.config_get("hash-max-ziplist-value", **await home_node(redis))
        value = int(str(next(iter(found.values()))))
    except (StoreUnavailable, ResponseError, ValueError, StopIteration):
        return None
    if value >= COMPACT_HASH_VALUE:
        return None
    return (
        f"this Redis has hash-max-ziplist-value {value}: each queued event takes about a "
        f"quarter more memory than with {COMPACT_HASH_VALUE} (deploy/redis.conf sets it)"
    )


@contextlib.asynccontextmanager
async def redis_for(settings: Settings) -> AsyncIterator[Redis]:
    """A client for the configured Redis, joining (and maybe starting) the embedded one."""
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        await asyncio.to_thread(embedded.acquire)
        url = embedded.url
    else:
        url = settings.redis_url.get_secret_value()
    client = redis_client(url)
    try:
        yield client
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.release)
