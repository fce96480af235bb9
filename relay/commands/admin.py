"""Commands about keys, events and configuration: ``relay keys``, ``events``, ``config``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from relay.apikeys import KEY_RE, check_key_request
from relay.commands.reach import reach_redis
from relay.configcheck import check_convertr_forms
from relay.connect import check_version
from relay.errors import RelayError
from relay.keystore import KeyStore
from relay.models import KeyCreate
from relay.replicas import Replicas
from relay.settings import Settings
from relay.store import EventStore

__all__ = ["config_check", "events_show", "keys_create", "keys_list", "keys_revoke"]


# --- keys --------------------------------------------------------------------


async def keys_create(settings: Settings, args: argparse.Namespace) -> int:
    body = KeyCreate.model_construct(
        name=args.name,
        scopes=args.scope,
        expires=args.expires,
        destinations=args.destination,
        rate_limit=args.rate_limit,
        signing=args.signing,
        mode="test" if args.test else "live",
    )
    if len(args.name) > 100:
        raise RelayError(f"--name: at most 100 characters (got {len(args.name)})")
    checked = check_key_request(body, known_destinations=settings.destinations)
    async with reach_redis(settings) as redis:
        store = KeyStore(redis, replicas=Replicas.of(settings))
        record, key = await store.create(**checked)
    created = record.created(key)
    if args.json:
        print(orjson.dumps(created.model_dump(mode="json")).decode())
        return 0
    print(f"Created {record.mode} key {record.id} ({record.name!r}):\n\n    {key}\n")
    if record.signing_secret:
        print(f"Signing secret (sign the raw body):\n\n    {record.signing_secret}\n")
    print("Copy it now: relay keeps only the key's digest and shows neither again.\n")
    _table(
        [
            ("prefix", record.prefix),
            ("scopes", " ".join(record.scopes)),
            ("destinations", " ".join(record.destinations) or "all"),
            ("rate limit", record.rate_limit or "none"),
            ("expires", record.expires_at.isoformat() if record.expires_at else "never"),
        ]
    )
    return 0


async def keys_list(settings: Settings, args: argparse.Namespace) -> int:
    async with reach_redis(settings) as redis:
        records = await KeyStore(redis).list()
    if args.json:
        print(orjson.dumps([r.info().model_dump(mode="json") for r in records]).decode())
        return 0
    if not records:
        print("No keys yet. Create one: relay keys create --name NAME --scope write:leads")
        return 0
    rows = [("ID", "PREFIX", "NAME", "MODE", "SCOPES", "DESTINATIONS", "EXPIRES", "STATE")]
    for r in records:
        rows.append(
            (
                r.id,
                r.prefix,
                r.name,
                r.mode,
                ",".join(r.scopes),
                ",".join(r.destinations) or "all",
                r.expires_at.strftime("%Y-%m-%d %H:%M") if r.expires_at else "never",
                r.state(),
            )
        )
    _columns(rows)
    return 0


async def keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async with reach_redis(settings) as redis:
        store = KeyStore(redis, replicas=Replicas.of(settings))
        key_id = args.key_id
        if KEY_RE.match(key_id):  # the key itself: find it by digest, never print it
            found = await store.lookup(key_id)
            if found is None:
                raise RelayError("KEY_ID: that is a key relay never made (it is not shown here)")
            key_id = found.id
        elif not key_id.startswith("key_"):
            # Whatever it is (a key with a typo?), it is not echoed.
            raise RelayError("KEY_ID: expected a key id like key_… (see `relay keys list`)")
        record = await store.revoke(key_id)
    when = record.revoked_at.isoformat() if record.revoked_at else "?"
    print(f"Revoked {record.id} ({record.prefix}…, {record.name!r}) at {when}.")
    print("It answers 401 from now on, on every API process.")
    return 0


# --- events ------------------------------------------------------------------


async def events_show(settings: Settings, args: argparse.Namespace) -> int:
    async with reach_redis(settings) as redis:
        view = await EventStore(
            redis, retention_s=settings.retention_s, partitions=settings.partitions
        ).get(args.event_id)
    if view is None:
        print(
            f"relay: no event {args.event_id!r} (unknown, or older than the retention)",
            file=sys.stderr,
        )
        return 1
    data = view.model_dump(mode="json", exclude_none=True)
    if args.json:
        print(orjson.dumps(data).decode())
        return 0
    _table(
        [
            ("event", view.id),
            ("type", view.type),
            ("status", view.status),
            ("mode", view.mode),
            ("received", view.received_at.isoformat()),
            ("key", view.key_id),
            ("request", view.request_id or "-"),
        ]
    )
    print("\npayload:")
    print(orjson.dumps(data["payload"], option=orjson.OPT_INDENT_2).decode())
    print("\ndestinations:")
    if not view.destinations:
        print("  (none: no destination takes this event type, or the key may use none)")
    for dest in view.destinations:
        print(f"  {dest.name:<20} {dest.status.value}")
        for a in dest.attempts:
            when = datetime.fromtimestamp(float(a["at"]), UTC).strftime("%Y-%m-%d %H:%M:%S")
            what = " ".join(
                str(a[k]) for k in ("status", "error", "upstream_id", "note") if a.get(k)
            )
            print(f"    {when}  {a['outcome']:<11} {a['duration_ms']:>7.0f} ms  {what}")
            if a.get("excerpt") and a["outcome"] != "delivered":
                print(f"      {a['excerpt'][:200]}")
    return 0


async def events_find(settings: Settings, args: argparse.Namespace) -> int:
    """``relay events find TEXT``: EventStore.find, as the API's ``q`` and the console."""
    async with reach_redis(settings) as redis:
        store = EventStore(
            redis,
            retention_s=settings.retention_s,
            partitions=settings.partitions,
            default_region=settings.default_region,
        )
        views = await store.find(args.text, limit=max(args.limit, 1))
    if not views:
        print(f"relay: no event found for {args.text!r}", file=sys.stderr)
        return 1
    if args.json:
        for view in views:
            print(orjson.dumps(view.model_dump(mode="json", exclude_none=True)).decode())
        return 0
    head = ("event", "type", "status", "received", "email", "phone")
    _columns(
        [
            head,
            *(
                (
                    v.id,
                    v.type,
                    v.status,
                    v.received_at.isoformat(timespec="seconds"),
                    v.payload.email or "-",
                    v.payload.phone or "-",
                )
                for v in views
            ),
        ]
    )
    return 0


# --- config ------------------------------------------------------------------


async def config_check(settings: Settings, args: argparse.Namespace) -> int:
    """Validate the configuration and reach Redis; for Convertr, compare the field
    mapping with the form."""
    async with reach_redis(settings) as redis:
        version = await check_version(redis)
    source = str(settings.config) if settings.config else "no relay.toml (defaults and RELAY_*)"
    print(f"Configuration OK: {source}")
    where = f"embedded, data in {settings.data_dir}" if settings.redis_url is None else "URL"
    print(f"  redis: {version}, reachable ({where})")
    if not settings.destinations:
        print("  destinations: none (events are stored but go nowhere)")
    for name, dest in settings.destinations.items():
        state = "" if dest.enabled else " (disabled)"
        limit = f", limit {dest.rate_limit}" if dest.rate_limit else ""
        print(f"  {name}: {dest.type}, events {', '.join(dest.events)}{limit}{state}")
    problems = 0
    for finding in await check_convertr_forms(settings):
        if finding.ok:
            print(f"  {finding.destination}: {finding.text}")
        else:
            problems += 1
            print(f"relay: {finding.destination}: {finding.text}", file=sys.stderr)
    return 1 if problems else 0


# --- output helpers ------------------------------------------------------------


def _table(rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def _columns(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
