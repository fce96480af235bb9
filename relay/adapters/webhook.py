"""Any HTTP endpoint: the stored event as JSON, signed with Standard Webhooks headers.

``webhook-id`` is the event id, the same on every retry, so the receiver can
drop duplicates; ``webhook-timestamp`` is the unix time of this attempt;
``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
where the key is the base64 part of the ``whsec_`` secret (standardwebhooks.com).
A 2xx is delivered; a 410 means the receiver is gone for good (rejected);
everything else is classified as in :mod:`relay.adapters.classify`.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import classify_status
from relay.adapters.transport import Answer, attempt_for, send
from relay.settings import WebhookDestination

__all__ = ["WebhookAdapter", "secret_forms", "sign", "signed_headers"]

_PREFIX = "whsec_"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message.

    ``secret`` is ``whsec_`` + base64 (the prefix is optional here).
    """
    when = datetime.fromtimestamp(timestamp, UTC)
    signature: str = _webhook(secret).sign(msg_id, when, body.decode())
    return signature


#: A destination's signer, made once per secret (it decodes the key when made).
_webhook = functools.lru_cache(maxsize=256)(Webhook)


def secret_forms(secret: str) -> tuple[str, str]:
    """A ``whsec_`` secret as it may show in text (with and without its prefix), to scrub."""
    return secret, secret.removeprefix(_PREFIX)


def signed_headers(secret: str, msg_id: str, body: bytes) -> dict[str, str]:
    """The JSON and Standard Webhooks headers of one message, signed now."""
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


class WebhookAdapter:
    """Delivers events to one signed HTTP endpoint."""

    __slots__ = ("_config", "_secret", "_secrets", "_session", "name")

    def __init__(
        self, name: str, config: WebhookDestination, session: aiohttp.ClientSession
    ) -> None:
        self.name = name
        self._config = config
        self._session = session
        self._secret = config.secret.get_secret_value()
        self._secrets = secret_forms(self._secret)

    def __repr__(self) -> str:
        # The URL's query may hold a token of the receiver's: show where, not how.
        parts = urlsplit(self._config.url)
        where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        return f"<WebhookAdapter name={self.name!r} url={where + parts.path!r}>"

    async def deliver(self, event: dict[str, Any]) -> Attempt:
        """POST the event, signed; one attempt."""
        body = orjson.dumps(event)
        headers = signed_headers(self._secret, str(event["id"]), body)
        return await send(
            self._session,
            "POST",
            self._config.url,
            timeout_s=self._config.timeout_s,
            secrets=self._secrets,
            judge=self._judge,
            data=body,
            headers=headers,
        )

    def _judge(self, answer: Answer) -> Attempt:
        """A 410 means the receiver is gone for good; other answers are classified as usual."""
        if answer.status == 410:
            return attempt_for(answer, Outcome.rejected, self._secrets, note="gone")
        return attempt_for(answer, classify_status(answer.status), self._secrets)
