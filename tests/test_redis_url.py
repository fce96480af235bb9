"""RELAY_REDIS_URL: the forms relay reads, and errors that say what is wrong without the
password."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.redis_url import parse_redis_url
from relay.settings import load_settings


def test_a_cluster_url_names_every_node_and_its_credentials() -> None:
    target = parse_redis_url(
        "rediss+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001,db?ssl_ca_certs=/ca.pem"
    )
    assert target.kind == "cluster"
    assert target.hosts == (("10.0.0.1", 7000), ("::1", 7001), ("db", 6379))
    assert (target.username, target.password, target.tls) == ("app", "s@cret", True)
    assert target.ssl == {"ssl_ca_certs": "/ca.pem"}
    assert "s@cret" not in repr(target)


def test_a_sentinel_url_names_its_service_and_who_gets_which_password() -> None:
    both = parse_redis_url("redis+sentinel://:pw@h1:26379,h2/mymaster/2")
    assert both.kind == "sentinel"
    assert (both.service, both.db) == ("mymaster", 2)
    assert both.hosts == (("h1", 26379), ("h2", 26379))
    assert (both.password, both.sentinel_password) == ("pw", "pw")  # the usual: one for all
    own = parse_redis_url("redis+sentinel://:pw@h1/mymaster?sentinel_password=sp")
    assert (own.password, own.sentinel_password) == ("pw", "sp")
    none = parse_redis_url("redis+sentinel://:pw@h1/mymaster?sentinel_password=")
    assert (none.password, none.sentinel_password) == ("pw", None)


def test_single_forms_are_left_to_redis_py() -> None:
    for url in ("redis://:pw@127.0.0.1:6379/3", "rediss://h:6380/0", "unix:///tmp/r.sock?db=1"):
        target = parse_redis_url(url)
        assert (target.kind, target.url) == ("single", url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://:hunter2@", "names no host"),
        ("redis+cluster://h1:7000,:7001", "host 2 of 2 is empty"),
        ("redis+cluster://h1:hunter2", "the host has a bad port (expected 1-65535)"),
        ("redis+cluster://h1:7000,h2:99999", "host 2 of 2 has a bad port"),
        ("redis+cluster://:hunter2@h1:7000/1", "a Redis Cluster has database 0 only"),
        ("redis+sentinel://:hunter2@h1:26379", "names no service"),
        ("redis+sentinel://h1/mymaster/x", "expected /service or /service/db"),
        ("redis+cluster://h1?sentinel_password=hunter2", "unknown option 'sentinel_password'"),
        ("rediss+cluster://h1?ssl_cert_reqs=maybe", "ssl_cert_reqs: expected one of"),
        ("redis+shard://:hunter2@h1", "unknown scheme redis+shard://"),
        ("hunter2", "expected a Redis URL"),
    ],
)
def test_a_bad_url_says_what_is_wrong_and_never_the_password(
    tmp_path: Path, url: str, says: str
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"RELAY_REDIS_URL": url, "RELAY_CONFIG": str(config)})
    message = str(caught.value)
    assert message.startswith("environment: RELAY_REDIS_URL: ")
    assert says in message
    assert "hunter2" not in message
