"""Convertr: post leads to a campaign form's webhook, and read the form's fields.

A lead is sent as ``form[<field>]=value`` (form-urlencoded), one pair per
payload field that ``config.fields`` maps (canonical name or custom-trait name
-> form field); the rest is left out and named in the attempt's note.

Answers follow UPSTREAMS.md's table, with one choice of ours: a 404 (wrong
campaign, form or publisher) is ``credentials``, not ``rejected``. It says the
destination is misconfigured, not that this lead is bad, so the events are
kept until the configuration is fixed instead of being dead-lettered one by one.

The API key travels in the query string, so every note, excerpt and error is
scrubbed of it (aiohttp's exception messages carry the full URL).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import classify_status, scrub
from relay.adapters.transport import Answer, attempt_for, read, send
from relay.errors import ConfigError, NoAnswer
from relay.settings import ConvertrDestination

__all__ = ["ConvertrAdapter", "check_mapping", "lead_form", "parse_form_fields"]

_FORM_KEY = re.compile(r"form\[(.+)\]")


def _form_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def lead_form(
    payload: Mapping[str, Any], fields: Mapping[str, str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The ``form[...]`` pairs for a payload, and the payload fields nothing maps.

    >>> lead_form({"email": "a@b.co", "city": "Leeds"}, {"email": "email"})
    ([('form[email]', 'a@b.co')], ['city'])
    """
    present = [(k, v) for k, v in payload.items() if k not in ("traits", "events")]
    present += list((payload.get("traits") or {}).items())
    pairs, unmapped = [], []
    for key, value in present:
        if value is None or value == "":
            continue
        if key in fields:
            pairs.append((f"form[{fields[key]}]", _form_value(value)))
        else:
            unmapped.append(key)
    return pairs, unmapped


def parse_form_fields(doc: Any, form_id: int) -> list[dict[str, Any]]:
    """The fields of form ``form_id`` from a fields answer (v2 objects or v1 strings).

    Returns ``[{"name": "firstName", "required": bool, "hidden": bool}, ...]``;
    raises ``ValueError`` when the answer has no such form.
    """
    forms = doc if isinstance(doc, list) else []
    for form in forms:
        if not isinstance(form, dict) or str(form.get("formId")) != str(form_id):
            continue
        out = []
        for field in form.get("fields") or []:
            item = field if isinstance(field, dict) else {"key": field}
            key = str(item.get("key", ""))
            m = _FORM_KEY.fullmatch(key)
            out.append(
                {
                    "name": m[1] if m else key,
                    "required": bool(item.get("required", False)),
                    "hidden": bool(item.get("hidden", False)),
                }
            )
        return out
    found = ", ".join(
        f"{f.get('formId')} ({f.get('formName')})" for f in forms if isinstance(f, dict)
    )
    raise ValueError(f"the campaign has no form {form_id} (its forms: {found or 'none'})")


def check_mapping(
    fields_mapping: Mapping[str, str], form_fields: list[dict[str, Any]]
) -> list[str]:
    """Human-readable problems between a destination's mapping and its form; [] when none."""
    names = [str(f["name"]) for f in form_fields]
    problems = [
        f"{source} -> {field}: the form has no field {field!r} (it has: {', '.join(names)})"
        for source, field in fields_mapping.items()
        if field not in names
    ]
    mapped = set(fields_mapping.values())
    problems += [
        f"form field {f['name']!r} is required but nothing maps to it"
        + (" (it is hidden)" if f.get("hidden") else "")
        for f in form_fields
        if f.get("required") and f["name"] not in mapped
    ]
    return problems


class ConvertrAdapter:
    """Delivers leads to one Convertr campaign form."""

    __slots__ = ("_config", "_params", "_secrets", "_session", "name")

    def __init__(
        self, name: str, config: ConvertrDestination, session: aiohttp.ClientSession
    ) -> None:
        self.name = name
        self._config = config
        self._session = session
        key = config.api_key.get_secret_value()
        self._secrets = (key,)
        self._params = {"apikey": key, "publisherId": str(config.publisher_id)}
        if config.link_id is not None:
            self._params["campaignLinkId"] = str(config.link_id)

    def __repr__(self) -> str:
        c = self._config
        return (
            f"<ConvertrAdapter name={self.name!r} url={c.url!r} campaign_id={c.campaign_id}"
            f" form_id={c.form_id} publisher_id={c.publisher_id}>"
        )

    @property
    def endpoint(self) -> str:
        """The lead URL, without its query (which holds the API key)."""
        c = self._config
        return f"{c.url}/webhook/campaign/{c.campaign_id}/global-form/{c.form_id}/leads"

    async def deliver(self, event: dict[str, Any]) -> Attempt:
        """Post one lead; unmapped payload fields are left out and listed in the note."""
        pairs, unmapped = lead_form(event.get("payload") or {}, self._config.fields)
        left_out = f"not sent (no mapping): {', '.join(unmapped)}" if unmapped else None
        if not pairs:
            note = _join("no payload field is mapped to a form field; nothing was sent", left_out)
            return Attempt(Outcome.rejected, None, 0.0, error="nothing_mapped", note=note)
        return await send(
            self._session,
            "POST",
            self.endpoint,
            timeout_s=self._config.timeout_s,
            secrets=self._secrets,
            judge=functools.partial(self._judge, left_out=left_out),
            params=self._params,
            data=pairs,
        )

    def _judge(self, answer: Answer, left_out: str | None) -> Attempt:
        """Classify a lead answer (any 2xx delivered, 404 credentials), ``left_out`` in the note."""
        doc = _json(answer.body)
        body = doc if isinstance(doc, dict) else {}
        status = answer.status
        if 200 <= status < 300:
            # Any 2xx: Convertr may have created the lead, and it does not reject
            # duplicates, so sending again would risk a second lead.
            data = body.get("data")
            lead_id = None if data is None or isinstance(data, dict | list) else str(data)
            extra = None if lead_id else "no lead id in the answer"
            return attempt_for(
                answer,
                Outcome.delivered,
                self._secrets,
                note=_join(left_out, extra),
                upstream_id=lead_id,
            )
        outcome = classify_status(status)
        why: str | None = None
        if status == 400:
            why = _validation_errors(body)
        elif status == 401:
            why = "Convertr refused the API key"
        elif status == 403:
            why = f"Convertr refused: {body.get('error') or body.get('message') or 'forbidden'}"
        elif status == 404:
            outcome = Outcome.credentials
            why = (
                f"Convertr answered 404 ({body.get('message') or 'Not Found'}): check"
                " campaign_id, form_id, publisher_id and base_url"
            )
        return attempt_for(answer, outcome, self._secrets, note=_join(why, left_out))

    async def form_fields(self) -> list[dict[str, Any]]:
        """The fields of this destination's form, read from Convertr (v2, else v1).

        Raises :class:`~relay.errors.ConfigError` when they cannot be read.
        """
        c = self._config
        where = f"destinations.{self.name}"
        try:
            answer = await self._read_fields("/v2")
            if answer.status == 404:  # not found on v2: ask v1
                answer = await self._read_fields("")
        except NoAnswer as exc:
            raise ConfigError(f"{where}: could not reach Convertr: {exc}") from None
        if answer.status != 200:
            text = scrub(answer.body.decode("utf-8", "replace"), self._secrets)[:200]
            raise ConfigError(
                f"{where}: Convertr answered {answer.status} when asked for campaign"
                f" {c.campaign_id}'s form fields: {text}"
            )
        try:
            return parse_form_fields(_json(answer.body), c.form_id)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    async def _read_fields(self, version: str) -> Answer:
        """The answer of the form-fields endpoint of API ``version`` (``/v2`` or ``""``)."""
        c = self._config
        return await read(
            self._session,
            "GET",
            f"{c.url}/webhook/campaign{version}/{c.campaign_id}/global-form/fields",
            timeout_s=c.timeout_s,
            secrets=self._secrets,
            params={"apikey": c.api_key.get_secret_value()},
        )


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _validation_errors(body: Mapping[str, Any]) -> str:
    """``Validation failed: form[email]: This value is not a valid email address.``."""
    data = body.get("data")
    errors: list[Any] = data if isinstance(data, list) else []
    parts = [
        f"{e['fieldName']}: {e.get('message')}" if e.get("fieldName") else str(e.get("message"))
        for e in errors
        if isinstance(e, dict)
    ]
    head = str(body.get("message") or "rejected")
    return f"{head}: {'; '.join(parts)}" if parts else head


def _join(*notes: str | None) -> str | None:
    text = "; ".join(n for n in notes if n)
    return text or None
