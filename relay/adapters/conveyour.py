"""ConveYour: create or update contacts with ``POST /api/analytics/identify``, then
record what they did with ``POST /api/analytics/track``.

A stored event's payload becomes ``{"id": <config.id>, "traits": {...}}``: every
canonical field plus the custom traits flattened in (a custom trait never
overrides a canonical field), with ``phone`` sent as ``mobile``, ConveYour's
name for it, so that ``"$mobile"`` ids work. ConveYour counts a call as done
only on HTTP 200 with ``{"status": "ok"}``; anything else is classified as in
:mod:`relay.adapters.classify` (see UPSTREAMS.md: its error codes are unknown).

A contact's ``events`` go after its identify succeeded, one track call each, in
order, under a rate slot each (``before_each``). The attempt's ``steps`` counts the
calls taken so far; a retry starts after them (``done``), so a track that failed is
sent again without the identify or the tracks before it; a dead letter's replay
resumes the same way (its last attempt keeps ``steps``). A track's answer is judged
apart (``_judge_track``): its success shape is undocumented and a track sent twice is
recorded twice, so any 2xx counts as taken unless it says ``status`` other than ``ok``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import orjson

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import classify_status
from relay.adapters.transport import Answer, attempt_for, send
from relay.models import CANONICAL_FIELDS
from relay.settings import ConveyourDestination

__all__ = ["ConveyourAdapter", "identify_traits"]

IDENTIFY_PATH = "/api/analytics/identify"
TRACK_PATH = "/api/analytics/track"
#: Canonical field -> ConveYour trait, where they differ.
_RENAMED = {"phone": "mobile"}


def identify_traits(payload: dict[str, Any]) -> dict[str, Any]:
    """ConveYour traits for a stored payload: canonical fields, then custom traits.

    >>> identify_traits({"email": "a@b.co", "phone": "+15551234567", "traits": {"plan": "pro"}})
    {'email': 'a@b.co', 'mobile': '+15551234567', 'plan': 'pro'}
    """
    traits = {
        _RENAMED.get(k, k): v
        for k, v in payload.items()
        if k not in ("traits", "events") and v not in (None, "")
    }
    custom = payload.get("traits") or {}
    for key, value in custom.items():
        if key not in CANONICAL_FIELDS:
            traits.setdefault(key, value)
    return traits


class ConveyourAdapter:
    """Delivers contacts to one ConveYour destination, one or a batch per request."""

    __slots__ = (
        "_config",
        "_endpoint",
        "_headers",
        "_id_traits",
        "_secrets",
        "_session",
        "_track",
        "name",
    )

    def __init__(
        self, name: str, config: ConveyourDestination, session: aiohttp.ClientSession
    ) -> None:
        self.name = name
        self._config = config
        self._session = session
        self._endpoint = config.url + IDENTIFY_PATH
        self._track = config.url + TRACK_PATH
        #: The traits that identify a contact, in the order ConveYour tries them.
        self._id_traits = [part.removeprefix("$") for part in config.id.split(",")]
        self._headers = {"x-conveyour-token": config.token.get_secret_value()}
        if config.appkey is not None:
            self._headers["x-conveyour-appkey"] = config.appkey.get_secret_value()
        self._secrets = tuple(v for k, v in self._headers.items() if k.startswith("x-conveyour"))

    def __repr__(self) -> str:
        return (
            f"<ConveyourAdapter name={self.name!r} url={self._config.url!r} id={self._config.id!r}>"
        )

    def _item(self, event: dict[str, Any]) -> dict[str, Any] | Attempt:
        """The identify item for an event, or a ``rejected`` attempt if it lacks its id trait."""
        traits = identify_traits(event.get("payload") or {})
        if not any(traits.get(name) for name in self._id_traits):
            names = " or ".join(self._id_traits)
            note = (
                f"contact has no {names}: destination {self.name!r} identifies contacts"
                f" by {self._config.id}; nothing was sent"
            )
            return Attempt(Outcome.rejected, None, 0.0, error="missing_id_trait", note=note)
        return {"id": self._config.id, "traits": traits}

    async def _post(self, body: dict[str, Any], *, track: bool = False) -> Attempt:
        """One identify call (one contact, or a batch of them), or a track call, and its verdict."""
        return await send(
            self._session,
            "POST",
            self._track if track else self._endpoint,
            timeout_s=self._config.timeout_s,
            secrets=self._secrets,
            judge=self._judge_track if track else self._judge,
            data=orjson.dumps(body),
            headers={**self._headers, "Content-Type": "application/json"},
        )

    def _judge(self, answer: Answer) -> Attempt:
        """Classify an identify answer: delivered only on 200 with ``status == "ok"``."""
        outcome = classify_status(answer.status)
        if outcome is not Outcome.delivered:
            note = _message(answer.body) if outcome is Outcome.rejected else None
            return attempt_for(answer, outcome, self._secrets, note=note)
        try:
            doc = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            doc = None
        if answer.status != 200 or not isinstance(doc, dict):
            # Not an answer ConveYour documents: we cannot tell whether it took the
            # contact, and identify is an upsert, so sending it again is safe.
            note = f"unexpected answer (HTTP {answer.status}, not a JSON object); will retry"
            return attempt_for(answer, Outcome.retry, self._secrets, note=note)
        if doc.get("status") == "ok":
            return attempt_for(answer, Outcome.delivered, self._secrets)
        return self._refused(answer, doc)

    def _refused(self, answer: Answer, doc: dict[str, Any]) -> Attempt:
        """A 200 whose ``status`` is not ``ok``: ConveYour said no (its ``message`` says why)."""
        note = f"ConveYour said {doc.get('status')!r}: {doc.get('message') or 'no message'}"
        error = f"status_{doc.get('status') or 'missing'}"
        return attempt_for(answer, Outcome.rejected, self._secrets, note=note, error=error)

    def _judge_track(self, answer: Answer) -> Attempt:
        """Classify a track answer. Its success shape is not documented, and a track is not
        idempotent (sent twice, ConveYour records it twice): so any 2xx is taken, unless it
        is a JSON object whose ``status`` is given and is not ``ok`` (a refusal, as for
        identify). Other statuses as for identify."""
        outcome = classify_status(answer.status)
        if outcome is not Outcome.delivered:
            return self._judge(answer)
        try:
            doc = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and doc.get("status", "ok") != "ok":
            return self._refused(answer, doc)
        note = None
        if not isinstance(doc, dict) or "status" not in doc:
            note = f"taken on HTTP {answer.status} with no status in the answer (not resent)"
        return attempt_for(answer, Outcome.delivered, self._secrets, note=note)

    async def deliver(
        self,
        event: dict[str, Any],
        *,
        before_each: Callable[[], Awaitable[None]] | None = None,
        done: int = 0,
    ) -> Attempt:
        """Send one contact with one identify call, then its track events.

        ``done``: calls of this event the upstream took in earlier attempts (their
        ``steps``); they are not sent again. ``before_each`` is awaited before every
        call but the first (the caller's rate limit: the first was already counted).
        """
        item = self._item(event)
        if isinstance(item, Attempt):
            return item
        if done == 0:
            attempt = await self._post(item)
            if attempt.outcome is not Outcome.delivered or not _tracks(event):
                return attempt
            return await self._tracks(event, item, 1, attempt, before_each)
        return await self._tracks(event, item, done, None, before_each)

    async def _tracks(
        self,
        event: dict[str, Any],
        item: dict[str, Any],
        done: int,
        last: Attempt | None,
        before_each: Callable[[], Awaitable[None]] | None,
    ) -> Attempt:
        """Send the track events after the first ``done - 1``; the last call's attempt,
        with ``steps`` (calls taken so far) and the time all its calls took (the
        identify's included). ``last``: the identify just sent, if it was."""
        tracks = _tracks(event)
        spent_ms = last.duration_ms if last is not None else 0.0
        ident = next(str(item["traits"][n]) for n in self._id_traits if item["traits"].get(n))
        notes: list[str] = []
        for i in range(done - 1, len(tracks)):
            if last is not None and before_each is not None:
                await before_each()
            last = await self._post({"id": ident, "events": [tracks[i]]}, track=True)
            spent_ms += last.duration_ms
            if last.outcome is not Outcome.delivered:
                why = f"track event {i} ({tracks[i]['event']!r}) not taken"
                note = f"{why}: {last.note}" if last.note else why
                return dataclasses.replace(
                    last, steps=done, note=note[:500], duration_ms=round(spent_ms, 3)
                )
            if last.note:  # taken, but oddly: kept, or the calls after it would hide it
                notes.append(f"track event {i} ({tracks[i]['event']!r}): {last.note}")
            done += 1
        if last is None:  # nothing was left to send (cannot happen: it would be delivered)
            return Attempt(Outcome.delivered, None, 0.0, steps=done)
        return dataclasses.replace(
            last,
            steps=done,
            note="; ".join(notes)[:500] or last.note,
            duration_ms=round(spent_ms, 3),
        )

    async def deliver_batch(
        self,
        events: list[dict[str, Any]],
        *,
        before_each: Callable[[], Awaitable[None]] | None = None,
        done: Sequence[int] = (),
    ) -> list[Attempt]:
        """Send several contacts in one ``{"data": [...]}`` call; one attempt per event, in order.

        Events lacking their id trait are rejected without being sent. If the
        batch is rejected, each event is sent alone, so that one bad contact
        never blocks the others; retry and credentials apply to every event.
        ``before_each`` is awaited before each of those extra requests (the
        caller's rate limit: the batch call itself was already counted), and so
        are the track events of each contact once the identify took it. ``done``: the
        calls each event's earlier attempts got taken (an event with any is sent alone,
        resuming after them).
        """
        done = list(done) or [0] * len(events)
        if len(events) == 1:
            return [await self.deliver(events[0], before_each=before_each, done=done[0])]
        results: list[Attempt | None] = [None] * len(events)
        batch: list[tuple[int, dict[str, Any]]] = []
        resumed: list[int] = []
        for i, event in enumerate(events):
            item = self._item(event)
            if isinstance(item, Attempt):
                results[i] = item
            elif done[i]:
                resumed.append(i)
            else:
                batch.append((i, item))
        slot_used = False  # the rate slot taken for this request is spent yet
        if len(batch) == 1:
            results[batch[0][0]] = await self.deliver(events[batch[0][0]], before_each=before_each)
            slot_used = True
        elif batch:
            shared = await self._post({"data": [item for _, item in batch]})
            slot_used = True
            for i, item in batch:
                if shared.outcome is Outcome.rejected:
                    if before_each is not None:
                        await before_each()
                    results[i] = await self.deliver(events[i], before_each=before_each)
                elif shared.outcome is Outcome.delivered and _tracks(events[i]):
                    results[i] = await self._tracks(events[i], item, 1, shared, before_each)
                else:
                    results[i] = shared
        for i in resumed:
            if slot_used and before_each is not None:
                await before_each()
            results[i] = await self.deliver(events[i], before_each=before_each, done=done[i])
            slot_used = True
        return [r for r in results if r is not None]


def _tracks(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The track events a stored event carries (none for most)."""
    tracks = (event.get("payload") or {}).get("events") or []
    return list(tracks)


def _message(body: bytes) -> str | None:
    """The ``message`` of a ConveYour JSON error body, if it has one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message) if message else None
