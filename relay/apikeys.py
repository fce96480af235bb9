"""API keys: their format, digest, expiry syntax and the record relay keeps.

A key is ``rly_live_`` (or ``rly_test_``) followed by 32 base62 characters
from :mod:`secrets`. Only its SHA-256 digest is stored; the key itself is
shown once, at creation. Lists show the first 12 characters (the prefix).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from relay.errors import FieldError, Forbidden, ValidationFailed
from relay.ids import random_base62
from relay.models import SCOPES, ApiKeyInfo, CreatedKey, KeyCreate, Me
from relay.settings import parse_rate_limit

__all__ = [
    "KEY_RE",
    "PREFIX_LENGTH",
    "KeyRecord",
    "broader_fields",
    "check_key_request",
    "check_reach",
    "check_scopes",
    "digest",
    "new_key",
    "new_signing_secret",
    "parse_expires",
]

KeyMode = Literal["live", "test"]

#: A well-formed key; anything else is refused before Redis is asked.
KEY_RE = re.compile(r"^rly_(live|test)_[0-9A-Za-z]{32}$")
#: Characters of a key shown in lists: ``rly_live_`` plus three of the secret.
PREFIX_LENGTH = 12
#: Longest name a key may have.
MAX_NAME_LENGTH = 100

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def digest(key: str) -> str:
    """SHA-256 hex digest of a key: the only form in which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(mode: KeyMode) -> str:
    """A fresh key of the given mode."""
    return f"rly_{mode}_{random_base62(32)}"


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def parse_expires(text: str, *, now: datetime | None = None) -> datetime:
    """An expiry given as an ISO 8601 instant or a duration from now (``30d``, ``12h``, ``2w``).

    A naive timestamp is taken as UTC. Raises ValueError with a message fit
    for the user when the text is neither, or names a time already past.
    """
    now = now or datetime.now(UTC)
    match = _DURATION_RE.match(text)
    if match:
        amount, unit = int(match[1]), match[2]
        if amount <= 0:
            raise ValueError(f"expiry {text!r} must be a positive duration")
        try:
            return now + timedelta(seconds=amount * _UNIT_S[unit])
        except OverflowError:  # past year 9999
            raise ValueError(f"expiry {text!r} is too far in the future") from None
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"expiry {text!r} is neither an ISO 8601 time (2027-01-31T00:00:00Z) "
            "nor a duration (30d, 12h, 2w)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise ValueError(f"expiry {text!r} is in the past")
    return when.astimezone(UTC)


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes, de-duplicated in order; ValueError naming any unknown one."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(
            f"unknown scope {', '.join(map(repr, unknown))} (allowed: {', '.join(SCOPES)})"
        )
    if not scopes:
        raise ValueError(f"a key needs at least one scope ({', '.join(SCOPES)})")
    return list(dict.fromkeys(scopes))


def check_key_request(
    body: KeyCreate, *, known_destinations: Collection[str], now: datetime | None = None
) -> dict[str, Any]:
    """Arguments for ``KeyStore.create`` from a request; ValidationFailed naming every problem."""
    errors: list[FieldError] = []
    out: dict[str, Any] = {"name": body.name.strip(), "mode": body.mode, "signing": body.signing}
    if not out["name"]:
        errors.append({"loc": ["body", "name"], "msg": "a key needs a name"})
    try:
        out["scopes"] = check_scopes(body.scopes)
    except ValueError as exc:
        errors.append({"loc": ["body", "scopes"], "msg": str(exc)})
    try:
        out["expires_at"] = parse_expires(body.expires, now=now) if body.expires else None
    except ValueError as exc:
        errors.append({"loc": ["body", "expires"], "msg": str(exc)})
    unknown = [d for d in body.destinations if d not in known_destinations]
    if unknown:
        known = ", ".join(known_destinations) or "none are configured in relay.toml"
        errors.append(
            {
                "loc": ["body", "destinations"],
                "msg": f"unknown destination {', '.join(map(repr, unknown))} (configured: {known})",
            }
        )
    out["destinations"] = list(dict.fromkeys(body.destinations))
    try:
        out["rate_limit"] = str(parse_rate_limit(body.rate_limit)) if body.rate_limit else None
    except ValueError as exc:
        errors.append({"loc": ["body", "rate_limit"], "msg": str(exc)})
    if errors:
        raise ValidationFailed(errors[0]["msg"], errors=errors)
    return out


def broader_fields(
    holder: KeyRecord,
    *,
    scopes: Collection[str],
    destinations: Collection[str],
    mode: KeyMode,
    expires_at: datetime | None,
    rate_limit: str | None,
) -> list[tuple[str, str]]:
    """How a key with these attributes would be broader than ``holder``:
    ``(field, why)`` pairs, none when it is within the holder's reach.

    A key may create, list and revoke only keys within its reach, so a restricted
    admin cannot mint (or remove) a key that does more than it may. ``admin``
    counts as every scope: an admin key can already mint a key with any scope.
    A per-key rate limit is no broader when its count and its rate are both at
    most the holder's (limits are per key: they do not add up to the holder's).
    """
    out: list[tuple[str, str]] = []
    granted = SCOPES if "admin" in holder.scopes else holder.scopes
    if extra := [s for s in scopes if s not in granted]:
        out.append(("scopes", f"this key cannot grant {', '.join(extra)}, which it lacks"))
    allowed = holder.destinations
    if allowed and (not destinations or not set(destinations) <= set(allowed)):
        name = f"{', '.join(d for d in destinations if d not in allowed)}" or "every destination"
        out.append(
            (
                "destinations",
                f"this key may use only {', '.join(allowed)}, not {name}: name some of those "
                "(an empty list means every destination)",
            )
        )
    if holder.mode == "test" and mode != "test":
        out.append(("mode", "a test-mode key cannot make live keys"))
    if holder.expires_at is not None and (expires_at is None or expires_at > holder.expires_at):
        when = "never" if expires_at is None else expires_at.isoformat()
        out.append(
            (
                "expires",
                f"this key expires at {holder.expires_at.isoformat()}; a key it makes must "
                f"expire by then, not {when}",
            )
        )
    if holder.rate_limit is not None:
        mine = parse_rate_limit(holder.rate_limit)
        theirs = parse_rate_limit(rate_limit) if rate_limit else None
        if (
            theirs is None
            or theirs.count > mine.count
            or theirs.count / theirs.period_s > mine.count / mine.period_s
        ):
            out.append(
                (
                    "rate_limit",
                    f"this key is limited to {mine}; a key it makes needs a limit within "
                    f"that, not {theirs or 'none'}",
                )
            )
    return out


def check_reach(holder: KeyRecord, args: Mapping[str, Any]) -> None:
    """Forbidden, naming each field, unless ``holder`` may create the key of ``args``
    (what :func:`check_key_request` returned)."""
    broader = broader_fields(
        holder,
        scopes=args["scopes"],
        destinations=args["destinations"],
        mode=args["mode"],
        expires_at=args["expires_at"],
        rate_limit=args["rate_limit"],
    )
    if broader:
        errors: list[FieldError] = [{"loc": ["body", f], "msg": why} for f, why in broader]
        raise Forbidden(
            f"the new key would be broader than this key: {broader[0][1]}", errors=errors
        )


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What relay keeps of a key: everything but the key."""

    id: str
    digest: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    destinations: tuple[str, ...]
    mode: KeyMode
    created_at: datetime
    expires_at: datetime | None = None
    rate_limit: str | None = None
    revoked_at: datetime | None = None
    #: whsec_ secret requests must be signed with (kept: verifying needs it).
    signing_secret: str | None = None
    #: Extra fields later versions may add are kept, not dropped.
    extra: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<KeyRecord {self.id} {self.prefix}… {self.name!r} {self.state()}>"

    def state(self, *, now: datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "active"

    def reaches(self, other: KeyRecord) -> bool:
        """Whether ``other`` is within this key's reach (see :func:`broader_fields`)."""
        return not self.broader_fields_of(other)

    def broader_fields_of(self, other: KeyRecord) -> list[tuple[str, str]]:
        """How ``other`` is broader than this key (:func:`broader_fields`)."""
        return broader_fields(
            self,
            scopes=other.scopes,
            destinations=other.destinations,
            mode=other.mode,
            expires_at=other.expires_at,
            rate_limit=other.rate_limit,
        )

    def may_use(self, destination: str) -> bool:
        """Whether this key may send to a destination (an empty list allows all)."""
        return not self.destinations or destination in self.destinations

    def to_hash(self) -> dict[str, str]:
        """Flat string fields for a Redis hash."""
        out = {
            "id": self.id,
            "digest": self.digest,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": orjson.dumps(self.scopes).decode(),
            "destinations": orjson.dumps(self.destinations).decode(),
            "mode": self.mode,
            "created_at": self.created_at.isoformat(),
            **self.extra,
        }
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at.isoformat()
        if self.rate_limit is not None:
            out["rate_limit"] = self.rate_limit
        if self.revoked_at is not None:
            out["revoked_at"] = self.revoked_at.isoformat()
        if self.signing_secret is not None:
            out["signing_secret"] = self.signing_secret
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> KeyRecord:
        """Inverse of :meth:`to_hash`."""
        known = {
            "id", "digest", "name", "prefix", "scopes", "destinations", "mode",
            "created_at", "expires_at", "rate_limit", "revoked_at", "signing_secret",
        }  # fmt: skip
        mode: KeyMode = "test" if raw["mode"] == "test" else "live"
        return cls(
            id=raw["id"],
            digest=raw["digest"],
            name=raw["name"],
            prefix=raw["prefix"],
            scopes=tuple(orjson.loads(raw["scopes"])),
            destinations=tuple(orjson.loads(raw["destinations"])),
            mode=mode,
            created_at=datetime.fromisoformat(raw["created_at"]),
            expires_at=_opt_time(raw.get("expires_at")),
            rate_limit=raw.get("rate_limit"),
            revoked_at=_opt_time(raw.get("revoked_at")),
            signing_secret=raw.get("signing_secret"),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def info(self) -> ApiKeyInfo:
        """The record as key lists show it."""
        return ApiKeyInfo(
            id=self.id,
            name=self.name,
            prefix=self.prefix,
            scopes=list(self.scopes),
            destinations=list(self.destinations),
            expires_at=self.expires_at,
            mode=self.mode,
            rate_limit=self.rate_limit,
            signing=self.signing_secret is not None,
            created_at=self.created_at,
            revoked_at=self.revoked_at,
        )

    def created(self, key: str) -> CreatedKey:
        """The answer to a key's creation: the one time ``key`` is shown."""
        return CreatedKey(
            id=self.id,
            key=key,
            prefix=self.prefix,
            name=self.name,
            scopes=list(self.scopes),
            destinations=list(self.destinations),
            expires_at=self.expires_at,
            mode=self.mode,
            signing_secret=self.signing_secret,
        )

    def me(self) -> Me:
        """The record as ``GET /v1/me`` gives it."""
        return Me(
            id=self.id,
            name=self.name,
            prefix=self.prefix,
            scopes=list(self.scopes),
            destinations=list(self.destinations),
            mode=self.mode,
        )


def _opt_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
