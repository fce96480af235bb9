"""Fixtures: a real redis-server per session, a clean database per test, an app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay.api import create_app
from relay.connect import redis_client
from relay.keystore import KeyStore
from relay.settings import Settings, load_settings
from tests.redis_server import RedisServer
from tests.redis_topologies import ClusterServers, SentinelServers, running


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """A Redis Cluster of 3 masters with a replica each (with a password)."""
    servers = ClusterServers(tmp_path_factory.mktemp("cluster"), password="cluster-secret")
    with running(servers):
        yield servers


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    """A master and its replica as Sentinel's ``mymaster``, three sentinels watching."""
    servers = SentinelServers(
        tmp_path_factory.mktemp("sentinel"),
        service="mymaster",
        password="data-secret",
        sentinel_password="sentinel-secret",
    )
    with running(servers):
        yield servers


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to be stopped (and started again)."""
    server = RedisServer(tmp_path / "own")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_redis(own_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's own redis-server, free to be broken."""
    redis = redis_client(own_server.url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = redis_client(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(tmp_path: Path, redis_server: RedisServer) -> Callable[..., Settings]:
    """Settings for one test: the session's Redis, an optional relay.toml text."""

    def make(toml: str = "", **overrides: Any) -> Settings:
        # Always name a file, so a relay.toml where the tests run is never read.
        path = tmp_path / "relay.toml"
        path.write_text(toml)
        env = {"RELAY_REDIS_URL": redis_server.url, "RELAY_CONFIG": str(path)}
        return load_settings(env=env, **overrides)

    return make


DESTINATIONS_TOML = """
[destinations.conveyour]
type = "conveyour"
base_url = "http://127.0.0.1:9"
token = "cy-token-secret-0001"
events = ["contact", "lead"]

[destinations.convertr]
type = "convertr"
base_url = "http://127.0.0.1:9"
api_key = "cv-apikey-secret-0002"
campaign_id = 123
form_id = 45
publisher_id = 6
events = ["lead"]
"""


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(DESTINATIONS_TOML)


AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def app_client(redis: Redis, aiohttp_client: AppClient) -> AppClient:
    """Serve ``create_app(settings)`` on the test Redis; stopped before that client closes.

    (``redis`` is set up first so it is torn down last: a pub/sub listener whose
    client was closed under it does not cancel cleanly.)
    """

    async def make(settings: Settings) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(settings, redis=redis))

    return make


@pytest.fixture
async def client(app_client: AppClient, settings: Settings) -> TestClient[Any, Any]:
    return await app_client(settings)


@pytest.fixture
def make_key(redis: Redis) -> Callable[..., Awaitable[str]]:
    """Create a key straight in the store; returns the key."""

    async def make(*scopes: str, **kw: Any) -> str:
        _, key = await KeyStore(redis).create(
            name=kw.pop("name", "test"), scopes=list(scopes), **kw
        )
        return key

    return make
