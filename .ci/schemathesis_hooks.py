"""schemathesis hooks for .ci/schemathesis (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """A fresh Idempotency-Key per generated request: relay rightly answers 422 when a key
    comes back with another body, and that is state the schema cannot say."""
    if headers and "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = f"{str(headers['Idempotency-Key'])[:200]}-{uuid.uuid4().hex}"
    return headers
