"""Any HTTP endpoint: the stored event as JSON, signed with Standard Webhooks headers.

``webhook-id`` is the event id, the same on every retry, so the receiver can
drop duplicates; ``webhook-timestamp`` is the unix time of this attempt;
``webhook-signature`` is ``v1,`` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))
where the key is the base64 part of the ``whsec_`` secret (standardwebhooks.com).
A 2xx is delivered; a 410 means the receiver is gone for good (rejected);
everything else is classified as in :mod:`relay.adapters.classify`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import classify_status
from relay.adapters.transport import attempt_for, send
from relay.settings import WebhookDestination

__all__ = ["WebhookAdapter", "sign"]

_PREFIX = "whsec_"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message.

    ``secret`` is ``whsec_`` + base64 (the prefix is optional here).
    """
    when = datetime.fromtimestamp(timestamp, UTC)
    signature: str = Webhook(secret).sign(msg_id, when, body.decode())
    return signature


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
        self._secrets = (self._secret, self._secret.removeprefix(_PREFIX))

    def __repr__(self) -> str:
        # The URL's query may hold a token of the receiver's: show where, not how.
        parts = urlsplit(self._config.url)
        where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        return f"<WebhookAdapter name={self.name!r} url={where + parts.path!r}>"

    async def deliver(self, event: dict[str, Any]) -> Attempt:
        """POST the event, signed; one attempt."""
        body = orjson.dumps(event)
        msg_id = str(event["id"])
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, msg_id, timestamp, body),
        }
        answer = await send(
            self._session,
            "POST",
            self._config.url,
            timeout_s=self._config.timeout_s,
            secrets=self._secrets,
            data=body,
            headers=headers,
        )
        if isinstance(answer, Attempt):
            return answer
        if answer.status == 410:
            return attempt_for(answer, Outcome.rejected, self._secrets, note="gone")
        return attempt_for(answer, classify_status(answer.status), self._secrets)
