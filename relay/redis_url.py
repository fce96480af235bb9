"""``RELAY_REDIS_URL``, read in one place: which Redis topology, where, with what credentials.

The forms (``../shared/ARCHITECTURE.md``, "Scaling out")::

    redis://[user:password@]host:port[/db]          one Redis (redis-py reads it)
    rediss://...                                    the same over TLS
    unix://[user:password@]/path/redis.sock[?db=N]  a local socket
    redis+cluster://[user:password@]host:port[,host:port...][/0]
    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]

``rediss+cluster://`` and ``rediss+sentinel://`` are the TLS forms: every connection
(to each cluster node; to the sentinels and to the master they name) uses TLS.
A cluster has database 0 only, so ``/1`` is refused. For Sentinel, ``user:password``
authenticate to the master and to the sentinels alike (the usual setup: one password
for the deployment); ``?sentinel_password=...`` (and ``sentinel_username=``) give the
sentinels credentials of their own, an empty ``sentinel_password=`` none at all.
TLS forms take ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
``ssl_cert_reqs`` (``required``, ``optional``, ``none``).

Errors say what is wrong without echoing the URL, which may hold a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

__all__ = ["RedisTarget", "RedisUrlError", "parse_redis_url"]

#: Schemes redis-py reads itself (``Redis.from_url``).
_SINGLE = ("redis", "rediss", "unix")
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
_CERT_REQS = ("required", "optional", "none")


class RedisUrlError(ValueError):
    """RELAY_REDIS_URL is not one of the forms relay reads (the message says why)."""


@dataclass(frozen=True, repr=False)
class RedisTarget:
    """What a ``RELAY_REDIS_URL`` names. ``url`` is the whole URL for the single forms
    (redis-py parses it); the rest is filled for Cluster and Sentinel."""

    kind: Literal["single", "cluster", "sentinel"]
    url: str
    #: (host, port) of each cluster node or sentinel given.
    hosts: tuple[tuple[str, int], ...] = ()
    tls: bool = False
    username: str | None = None
    password: str | None = None
    #: Sentinel: the monitored master's name, and the database to select on it.
    service: str = ""
    db: int = 0
    #: Sentinel: the sentinels' own credentials (default: the URL's).
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    #: TLS options, as redis-py names its keyword arguments.
    ssl: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never the password
        where = ",".join(f"{h}:{p}" for h, p in self.hosts)
        return f"<RedisTarget {self.kind} {where}{'/' + self.service if self.service else ''}>"


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``url``; RedisUrlError naming what is wrong (no host, a bad port...)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisUrlError(f"expected a Redis URL ({_forms()})")
    scheme = scheme.lower()
    if scheme in _SINGLE:
        return RedisTarget("single", url, tls=scheme == "rediss")
    base, plus, topology = scheme.partition("+")
    if not plus or base not in ("redis", "rediss") or topology not in ("cluster", "sentinel"):
        raise RedisUrlError(f"unknown scheme {scheme}:// ({_forms()})")
    tls = base == "rediss"
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    creds, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(creds) if at else (None, None)
    hosts = _hosts(hostlist, scheme)
    options = dict(parse_qsl(query, keep_blank_values=True))
    allowed = (_TLS_OPTIONS if tls else ()) + (_SENTINEL_OPTIONS if topology == "sentinel" else ())
    for name in options:
        if name not in allowed:
            known = f" (known: {', '.join(allowed)})" if allowed else ""
            raise RedisUrlError(f"{scheme}:// URL: unknown option {name!r}{known}")
    if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
        raise RedisUrlError(f"ssl_cert_reqs: expected one of {', '.join(_CERT_REQS)}")
    ssl = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    parts = [unquote(p) for p in path.split("/")] if path else []
    if topology == "cluster":
        if parts not in ([], ["0"]):
            raise RedisUrlError(
                f"{scheme}:// URL: a Redis Cluster has database 0 only; drop the path"
            )
        return RedisTarget(
            "cluster", url, hosts, tls=tls, username=username, password=password, ssl=ssl
        )
    if not parts or not parts[0]:
        raise RedisUrlError(
            f"{scheme}:// URL names no service: add the master's name, "
            f"e.g. {scheme}://host:26379/mymaster"
        )
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise RedisUrlError(f"{scheme}:// URL: expected /service or /service/db after the hosts")
    sentinel_password = options.get("sentinel_password", password)
    return RedisTarget(
        "sentinel",
        url,
        hosts,
        tls=tls,
        username=username,
        password=password,
        service=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        sentinel_username=options.get("sentinel_username", username) or None,
        sentinel_password=sentinel_password or None,
        ssl=ssl,
    )


def _forms() -> str:
    return (
        "forms: redis://, rediss://, unix://, redis+cluster://host:port[,host:port...], "
        "redis+sentinel://host:port[,host:port...]/service"
    )


def _credentials(creds: str) -> tuple[str | None, str | None]:
    user, colon, password = creds.partition(":")
    if not colon:  # redis://password@host, as redis-cli and many hosts write it
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def _hosts(hostlist: str, scheme: str) -> tuple[tuple[str, int], ...]:
    if not hostlist:
        raise RedisUrlError(f"{scheme}:// URL names no host (expected host:port[,host:port...])")
    hosts = []
    items = hostlist.split(",")
    for n, item in enumerate(items, 1):
        which = f"host {n} of {len(items)}" if len(items) > 1 else "the host"
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "26379" if scheme.endswith("sentinel") else "6379"
        host = host.removeprefix("[").removesuffix("]")  # [::1]:7000
        if not host:
            raise RedisUrlError(f"{scheme}:// URL: {which} is empty")
        # Not echoed: a URL missing its '@' would put a password here.
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise RedisUrlError(f"{scheme}:// URL: {which} has a bad port (expected 1-65535)")
        hosts.append((host, int(port)))
    return tuple(hosts)
