"""Settings: the environment (``RELAY_*``), relay.toml and defaults, read once at startup.

This is the only module of relay that reads the environment. :func:`load_settings`
builds one frozen :class:`Settings`; everything else is handed it.

Precedence, highest first: keyword overrides (the CLI's flags), ``RELAY_*``
variables, relay.toml, defaults. The file is ``RELAY_CONFIG`` when set, else
``./relay.toml`` when it exists, else none. Inside the file's strings ``${NAME}``
is replaced by the environment variable ``NAME``; ``$${`` is a literal ``${``.
Every problem raises :class:`~relay.errors.ConfigError`, one line each, naming
the file (or variable), the key path, what was expected and what was found::

    relay.toml: destinations.convertr.campaign_id: expected an integer, got 'abc'
    environment: RELAY_PORT: expected an integer between 1 and 65535, got 'abc'
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import tomllib
from base64 import b64decode
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from relay.config_errors import dotted, explain
from relay.errors import ConfigError
from relay.partitions import DEFAULT_PARTITIONS
from relay.redis_url import parse_redis_url

__all__ = [
    "DEFAULT_CONVERTR_FIELDS",
    "DEFAULT_RETRY_SCHEDULE_S",
    "ConvertrDestination",
    "ConveyourDestination",
    "DeliverySettings",
    "Destination",
    "HooksSettings",
    "RateLimit",
    "Settings",
    "WebhookDestination",
    "environment_variables",
    "load_settings",
    "parse_rate_limit",
]

#: Seconds between delivery attempts: 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 3 h, 6 h, 12 h, 24 h.
DEFAULT_RETRY_SCHEDULE_S = (5.0, 30, 120, 600, 1800, 3600, 10800, 21600, 43200, 86400)
#: Canonical field name -> Convertr form field name (sent as ``form[<name>]``).
DEFAULT_CONVERTR_FIELDS: Mapping[str, str] = {
    "first_name": "firstName",
    "last_name": "lastName",
    "email": "email",
    "phone": "telephone",
    "company": "company",
    "job_title": "jobTitle",
}
_UNITS_S = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60}
_UNITS_S |= {"minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}
_UNITS_S |= {"d": 86400, "day": 86400, "days": 86400}
_RATE = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+(?:\.[0-9]+)?)?\s*([a-zA-Z]+)\s*")
#: ``$${`` (an escaped ``${``), a ``${NAME}`` reference, or a malformed ``${``.
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")
_LABEL = re.compile(r"(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class RateLimit(NamedTuple):
    """At most ``count`` requests per ``period_s`` seconds; ``str()`` gives ``2000/5m`` back."""

    #: Requests allowed per period (>= 1); shadows ``tuple.count``, which nobody needs here.
    count: int  # type: ignore[assignment]
    #: Length of the period in seconds (> 0).
    period_s: float

    def __str__(self) -> str:
        for suffix, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if (n := self.period_s / size) == int(n):
                return f"{self.count}/{'' if n == 1 else int(n)}{suffix}"
        return f"{self.count}/{self.period_s:g}s"


def parse_rate_limit(text: str) -> RateLimit:
    """Parse ``COUNT/[N]UNIT``: ``2000/5m``, ``10/s``, ``100/min``, ``3/10s``, ``5000/d``."""
    m = _RATE.fullmatch(text)
    unit = _UNITS_S.get(m[3].lower()) if m else None
    if m is None or unit is None or int(m[1]) < 1 or float(m[2] or 1) <= 0:
        raise ValueError(
            "expected a rate limit like '2000/5m' or '10/s' (a count >= 1 per period"
            f" in s, m, h or d), got {text!r}"
        )
    return RateLimit(int(m[1]), float(m[2] or 1) * unit)


def _to_rate_limit(value: object) -> RateLimit:
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        return parse_rate_limit(value)
    raise ValueError(f"expected a rate limit string like '2000/5m', got {value!r}")


def _must(test: Callable[[Any], object], expected: str, *, show: bool = True) -> AfterValidator:
    """A validator that fails with ``expected ..., got ...`` (``show=False``: secrets)."""

    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError(f"expected {expected}" + (f", got {value!r}" if show else ""))
        return value

    return AfterValidator(check)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_redis_url(value: SecretStr) -> SecretStr:
    parse_redis_url(value.get_secret_value())  # its errors never echo the URL
    return value


def _is_whsec(value: SecretStr) -> bool:
    raw = value.get_secret_value()
    try:
        return raw.startswith("whsec_") and bool(b64decode(raw[6:], validate=True))
    except binascii.Error:
        return False


EventKind = Literal["contact", "lead"]
#: A rate limit, written ``"2000/5m"`` in files and JSON.
RateLimitField = Annotated[
    RateLimit, PlainValidator(_to_rate_limit), PlainSerializer(str, when_used="json")
]
Events = Annotated[list[EventKind], Field(min_length=1)]
Secret = Annotated[
    SecretStr, _must(lambda v: v.get_secret_value(), "a non-empty value", show=False)
]
HttpUrl = Annotated[str, _must(_is_http_url, "an http:// or https:// URL")]
RedisUrl = Annotated[SecretStr, AfterValidator(_check_redis_url)]
#: A base URL without its trailing slash, so that ``url + "/api/..."`` joins.
BaseUrl = Annotated[HttpUrl, AfterValidator(lambda v: v.rstrip("/"))]
HostLabel = Annotated[
    str, _must(_LABEL.fullmatch, "a subdomain like 'acme'"), AfterValidator(str.lower)
]
DestinationName = Annotated[
    str,
    _must(
        _NAME.fullmatch, "a name of a-z, 0-9, '_' and '-' (at most 63, starting with a-z or 0-9)"
    ),
]


class DeliverySettings(BaseModel):
    """How fast and how patiently relay sends somewhere (destinations and hooks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    #: Seconds to wait for one upstream answer (the visibility timeout is longer).
    timeout_s: float = Field(10, gt=0, le=120)
    #: Seconds to wait before each retry; when the retry after the last step fails too,
    #: the delivery is dead-lettered (rejected credentials excepted: relay.retry).
    retry_schedule: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = list(
        DEFAULT_RETRY_SCHEDULE_S
    )
    #: Requests in flight at once, counted across every worker process.
    max_in_flight: int = Field(8, ge=1)
    #: Limit across every worker process and host; None: unlimited.
    rate_limit: RateLimitField | None = None


class _Destination(DeliverySettings):
    """What every destination takes: which events, how fast, how patiently."""

    #: Event kinds routed here.
    events: Events
    #: A disabled destination is routed nothing new; what is queued stays queued.
    enabled: bool = True


class ConveyourDestination(_Destination):
    """ConveYour's identify endpoint (contacts); see UPSTREAMS.md."""

    type: Literal["conveyour"] = "conveyour"
    #: Customer subdomain: ``acme`` -> ``https://acme.conveyour.com``.
    domain: HostLabel | None = None
    #: Whole base URL; wins over ``domain`` (tests, other regions).
    base_url: BaseUrl | None = None
    #: Sent as ``x-conveyour-token``.
    token: Secret
    #: Legacy ``x-conveyour-appkey`` header, sent only when set.
    appkey: Secret | None = None
    #: Traits that identify the contact.
    id: Annotated[
        str,
        AfterValidator(lambda v: ",".join(p.strip() for p in v.split(","))),
        _must(lambda v: set(v.split(",")) <= {"$email", "$mobile"}, "'$email', '$mobile' or both"),
    ] = "$email"
    events: Events = ["contact", "lead"]
    #: Undocumented upstream; 2000/5m is what a sibling API allows.
    rate_limit: RateLimitField | None = RateLimit(2000, 300.0)
    max_in_flight: int = Field(4, ge=1)
    #: Contacts per identify call (sent as ``{"data": [...]}`` above 1).
    batch_size: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _check_where(self) -> ConveyourDestination:
        if self.base_url is None and self.domain is None:
            raise ValueError("set domain (https://DOMAIN.conveyour.com) or base_url")
        return self

    @property
    def url(self) -> str:
        """Base URL requests go to, without trailing slash."""
        return self.base_url or f"https://{self.domain}.conveyour.com"


class ConvertrDestination(_Destination):
    """Convertr's campaign lead webhook (leads); see UPSTREAMS.md."""

    type: Literal["convertr"] = "convertr"
    #: Client instance: ``acme`` -> ``https://acme.cvtr.io``.
    subdomain: HostLabel | None = None
    #: Whole base URL; wins over ``subdomain``.
    base_url: BaseUrl | None = None
    #: Sent as the ``apikey`` query parameter.
    api_key: Secret
    campaign_id: int
    form_id: int
    publisher_id: int
    #: Sent as ``campaignLinkId`` when set.
    link_id: int | None = None
    events: Events = ["lead"]
    #: Documented: 3000 requests per 5 minutes per instance.
    rate_limit: RateLimitField | None = RateLimit(3000, 300.0)
    #: Convertr asks for fewer than 10 requests in flight.
    max_in_flight: int = Field(8, ge=1, le=9)
    #: Canonical name -> form field name; a table in the file replaces this whole default.
    fields: dict[str, str] = dict(DEFAULT_CONVERTR_FIELDS)

    @model_validator(mode="after")
    def _check_where(self) -> ConvertrDestination:
        if self.base_url is None and self.subdomain is None:
            raise ValueError("set subdomain (https://SUBDOMAIN.cvtr.io) or base_url")
        return self

    @property
    def url(self) -> str:
        """Base URL requests go to, without trailing slash."""
        return self.base_url or f"https://{self.subdomain}.cvtr.io"


class WebhookDestination(_Destination):
    """Any HTTP endpoint, signed with Standard Webhooks headers."""

    type: Literal["webhook"] = "webhook"
    #: Where events are POSTed.
    url: HttpUrl
    #: ``whsec_`` + base64: the key of the ``webhook-signature`` HMAC.
    secret: Annotated[SecretStr, _must(_is_whsec, "'whsec_' + base64", show=False)]
    events: Events = ["lead"]


#: One ``[destinations.NAME]`` table, chosen by its ``type``.
Destination = Annotated[
    ConveyourDestination | ConvertrDestination | WebhookDestination, Field(discriminator="type")
]


class HooksSettings(DeliverySettings):
    """The ``[hooks]`` table: outbound notifications (Zapier REST hooks).

    Notifications go through the same queue, retries and limits as deliveries;
    ``rate_limit`` and ``max_in_flight`` count every subscription together.
    """

    allow_private_targets: bool = Field(
        False, description="1: let hooks notify loopback, private and link-local addresses"
    )


class Settings(BaseSettings):
    """Everything relay is configured with; build it with :func:`load_settings`.

    ``Settings(...)`` takes only its arguments (its sources are narrowed to
    them), so building one in a test never depends on the environment.
    """

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="forbid", frozen=True)

    redis_url: RedisUrl | None = Field(
        None,
        description="Redis to use: redis://, rediss://, unix://, "
        "redis+cluster://HOST:PORT[,HOST:PORT...] or "
        "redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE (may hold user:password@; "
        "rediss+cluster://, rediss+sentinel:// for TLS); "
        "unset: an embedded redis-server with its append-only file under RELAY_DATA_DIR",
    )
    data_dir: Path = Field(
        Path(".relay"), description="the embedded Redis's data, append-only file and socket"
    )
    redis_min_replicas: int = Field(
        0,
        ge=0,
        description="replicas that must confirm a write (WAIT) before the API answers 2xx; "
        "503 when fewer do in time (default 0: none)",
    )
    #: Below the Redis client's socket timeout (relay.connect.SOCKET_TIMEOUT_S, 5 s), so
    #: a WAIT that runs out is a 503 saying so, not a dropped connection.
    redis_min_replicas_timeout_ms: int = Field(
        1000,
        ge=1,
        le=4000,
        description="milliseconds to wait for RELAY_REDIS_MIN_REPLICAS replicas to confirm",
    )
    #: The count is recorded in Redis at the first start (relay.partitions); a process
    #: started with another refuses to start. 1024: what an event id can name.
    partitions: int = Field(
        DEFAULT_PARTITIONS,
        ge=1,
        le=1024,
        description="partitions the events spread over, by contact (each its own Redis "
        "Cluster hash tag); fixed once data is written: drain before changing it",
    )
    #: The relay.toml that was loaded; None when there was none.
    config: Path | None = Field(
        None, description="the relay.toml to read (default ./relay.toml when it exists)"
    )
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address `relay serve` listens on, and `relay worker --metrics-port`",
    )
    port: int = Field(8080, ge=1, le=65535, description="port `relay serve` listens on")
    default_region: Annotated[
        str,
        _must(lambda v: v.upper() in phonenumbers.SUPPORTED_REGIONS, "an ISO 3166 code like 'US'"),
        AfterValidator(str.upper),
    ] = Field("US", description="ISO 3166 region of phone numbers given without a country code")
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="largest request body accepted, in bytes; 413 above"
    )
    max_batch: int = Field(500, ge=1, description="most items in one batch; 413 above")
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a request's whole body may take to arrive after its headers; "
        "408 after",
    )
    retention_s: int = Field(7 * 86400, ge=1, description="seconds an event record is kept")
    #: The visibility timeout, always above the upstream timeout.
    claim_after_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a delivery may stay unfinished past its destination's "
        "timeout_s before another worker takes it over",
    )
    log_level: Annotated[
        str,
        _must(
            lambda v: v.upper() in logging.getLevelNamesMapping(), "DEBUG, INFO, WARNING or ERROR"
        ),
        AfterValidator(str.upper),
    ] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Annotated[
        str,
        AfterValidator(str.lower),
        _must(lambda v: v in ("text", "json"), "text or json"),
    ] = Field(
        "text",
        description="text (readable lines) or json (one JSON object a line: ts, level, "
        "logger, msg, and request_id, event_id, destination, status, duration_ms where "
        "they apply)",
    )
    metrics_token: Secret | None = Field(
        None,
        description="bearer token GET /metrics then needs (Authorization: Bearer <token>); "
        "unset: /metrics is open",
    )
    #: Destinations by name, in file order.
    destinations: dict[DestinationName, Destination] = {}
    hooks: HooksSettings = HooksSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: :func:`load_settings` reads the environment, once."""
        return (init_settings,)

    def destinations_for(self, kind: str) -> list[str]:
        """Names of the enabled destinations that take events of ``kind``, in file order."""
        return [n for n, d in self.destinations.items() if d.enabled and kind in d.events]


#: Settings read from ``RELAY_<NAME>``; destinations and hooks come from the file.
_ENV_FIELDS = [n for n in Settings.model_fields if n not in ("config", "destinations", "hooks")]


def environment_variables() -> list[tuple[str, str]]:
    """Every variable :func:`load_settings` reads and what it does (for ``relay --help``),
    from the fields' descriptions, with the default when there is one."""
    prefix = Settings.model_config.get("env_prefix", "")
    fields = [(n, f) for n, f in Settings.model_fields.items() if n in ("config", *_ENV_FIELDS)]
    fields.append(("allow_private_targets", HooksSettings.model_fields["allow_private_targets"]))
    found = []
    for name, field in fields:
        text, default = field.description or "", field.default
        if default not in (None, False, PydanticUndefined):
            text += (
                f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
            )
        found.append((prefix + name.upper(), text))
    return found


def load_settings(*, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``overrides``, the environment, relay.toml and defaults.

    ``env`` stands for ``os.environ`` (tests pass it). Empty variables count as
    unset and None overrides are ignored, so a CLI can pass its optional flags
    straight through; ``config=PATH`` picks the file as ``RELAY_CONFIG`` does.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    overrides = {k: v for k, v in overrides.items() if v is not None}
    prefix = Settings.model_config.get("env_prefix", "")
    values: dict[str, Any] = {}
    origins: dict[tuple[str | int, ...], str] = {}
    path = _config_path(environ, overrides.pop("config", None), prefix)
    if path is not None:
        values |= _read_toml(path, environ)
        values["config"] = path
    for name in _ENV_FIELDS:
        if raw := environ.get(prefix + name.upper()):
            values[name] = raw
            origins[name,] = f"environment: {prefix}{name.upper()}"
    hooks = values.get("hooks", {})
    if (raw := environ.get(f"{prefix}ALLOW_PRIVATE_TARGETS")) and isinstance(hooks, dict):
        values["hooks"] = {**hooks, "allow_private_targets": raw}
        origins["hooks", "allow_private_targets"] = f"environment: {prefix}ALLOW_PRIVATE_TARGETS"
    for key, value in overrides.items():
        values[key] = value
        origins[key,] = f"overrides: {key}"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        # from None: pydantic's own text repeats the inputs, secrets included.
        label = str(path or "settings")
        raise ConfigError(explain(exc, label, origins, root=Settings, hidden={"config"})) from None


def _config_path(environ: Mapping[str, str], given: Any, prefix: str) -> Path | None:
    """The relay.toml to read: ``config=``, ``RELAY_CONFIG``, ``./relay.toml``, or none."""
    if given is not None:
        where, path = "config", Path(given)
    elif raw := environ.get(f"{prefix}CONFIG"):
        where, path = f"{prefix}CONFIG", Path(raw)
    else:
        return Path("relay.toml") if Path("relay.toml").is_file() else None
    if not path.is_file():
        raise ConfigError(f"{where}={path}: no such file")
    return path


def _read_toml(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """The file's tables with every ``${NAME}`` replaced; all problems in one error."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    problems: list[str] = []
    if "config" in data:
        problems.append(f"{path}: config: unknown key (RELAY_CONFIG picks the file)")

    def expand(value: Any, keys: tuple[str | int, ...]) -> Any:
        if isinstance(value, dict):
            return {k: expand(v, (*keys, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, (*keys, i)) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def substitute(m: re.Match[str]) -> str:
            if m[0] == "$${":
                return "${"
            if m[1] is None:
                where = f"{path}: {dotted(keys)}"
                problems.append(f"{where}: expected ${{NAME}} (write $${{ for a literal '${{')")
            elif m[1] not in environ:
                problems.append(f"{path}: {dotted(keys)}: environment variable {m[1]} is not set")
            return environ.get(m[1] or "", "")

        return _REF.sub(substitute, value)

    expanded: dict[str, Any] = expand(data, ())
    if problems:
        raise ConfigError("\n".join(problems))
    return expanded
