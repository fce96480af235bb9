"""schemathesis hooks for .ci/schemathesis (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A fresh Idempotency-Key on every request, in every phase: relay rightly answers 422
    when a key comes back with another body, and that is state the schema cannot say."""
    for headers in (case.headers, kwargs.get("headers")):
        if headers and "Idempotency-Key" in headers:
            sent = str(headers["Idempotency-Key"])[:200]
            headers["Idempotency-Key"] = f"{sent}-{uuid.uuid4().hex}"
