"""Send one queued notification to its subscription: the worker's adapter for ``_hooks``.

The body is the event as ``GET /v1/events`` shows it when the notification
is sent (so a Zapier app's hook and polling triggers give the same shape),
plus ``event`` (the topic), ``test`` and, for deliveries and failures, the
``destination``. It is signed with the subscription's ``whsec_`` secret
(Standard Webhooks); ``webhook-id`` is the notification id, the same on
every retry.

- 2xx: delivered. 410: the subscriber is gone: the subscription is deleted.
- A target that is, or now resolves to, a non-public address is refused
  without a request (unless ``[hooks] allow_private_targets``); a redirect
  is not followed and counts as a rejection.
- Other answers are classified as for deliveries, except that 401/403 are
  retried like any failure (one subscriber's answer says nothing about relay's
  health).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import aiohttp
import orjson

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import classify_status
from relay.adapters.transport import Answer, attempt_for, send
from relay.adapters.webhook import secret_forms, signed_headers
from relay.hooks import HookStore
from relay.models import Notification
from relay.redis_keys import NOTIFICATIONS
from relay.settings import HooksSettings
from relay.store import EventStore
from relay.targets import GuardedResolver, TargetRefused, TargetUnresolved, check_target

__all__ = ["Notifier", "guarded_session"]


def guarded_session(
    settings: HooksSettings, *, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    """The client session notifications go through: it connects only to public
    addresses unless private targets are allowed."""
    resolver = None if settings.allow_private_targets else GuardedResolver()
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=resolver), trace_configs=trace_configs
    )


class Notifier:
    """Sends notifications (records of the ``_hooks`` stream), one attempt each."""

    __slots__ = ("_events", "_hooks", "_session", "_settings", "name")

    def __init__(
        self,
        settings: HooksSettings,
        *,
        hooks: HookStore,
        events: EventStore,
        session: aiohttp.ClientSession,
    ) -> None:
        self.name = NOTIFICATIONS
        self._settings = settings
        self._hooks = hooks
        self._events = events
        self._session = session

    def __repr__(self) -> str:
        return f"<Notifier private_targets={self._settings.allow_private_targets}>"

    async def deliver(self, record: dict[str, Any]) -> Attempt:
        """Send one notification; never raises for the subscriber's trouble."""
        sub = await self._hooks.get(record["hook"])
        if sub is None:
            return _refused("subscription_deleted", "the subscription was deleted")
        try:
            await check_target(sub.target_url, allow_private=self._settings.allow_private_targets)
        except TargetUnresolved as exc:  # DNS trouble may pass: try again later
            return Attempt(Outcome.retry, None, 0.0, error="target_unresolved", note=str(exc))
        except TargetRefused as exc:
            return _refused("target_refused", str(exc))
        view = await self._events.get(record["event"])
        if view is None:
            return _refused("event_expired", f"event {record['event']} is past its retention")
        body = Notification(
            **view.model_dump(),
            event=record["topic"],
            test=record["mode"] == "test",
            destination=record.get("destination"),
        )
        data = orjson.dumps(body.model_dump(mode="json", exclude_none=True))  # as the list
        secrets = secret_forms(sub.secret)
        attempt = await send(
            self._session,
            "POST",
            sub.target_url,
            timeout_s=self._settings.timeout_s,
            secrets=secrets,
            judge=functools.partial(_judge, secrets=secrets),
            data=data,
            headers={**signed_headers(sub.secret, record["id"], data), "User-Agent": "relay-hooks"},
        )
        if attempt.status == 410:  # the subscriber is gone, so is its subscription
            await self._hooks.delete(sub.id)
        return attempt


def _judge(answer: Answer, *, secrets: Iterable[str]) -> Attempt:
    """A subscriber's answer as an attempt (a 410's note says what ``deliver`` then does)."""
    if answer.status == 410:
        note = "410 Gone: the subscriber unsubscribed; the subscription was deleted"
        return attempt_for(answer, Outcome.rejected, secrets, note=note)
    if 300 <= answer.status < 400:
        return attempt_for(answer, Outcome.rejected, secrets, note="redirects are not followed")
    outcome = classify_status(answer.status)
    if outcome is Outcome.credentials:
        outcome = Outcome.retry
    return attempt_for(answer, outcome, secrets)


def _refused(error: str, note: str) -> Attempt:
    return Attempt(Outcome.rejected, None, 0.0, error=error, note=note)
