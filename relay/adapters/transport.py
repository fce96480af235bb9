"""One timed HTTP request, its network trouble scrubbed of secrets.

Every adapter sends through :func:`send`, which always gives back one
:class:`~relay.adapters.base.Attempt`: it applies the destination's timeout,
measures the duration, reads the answer and hands it to the adapter's
``judge``, which says what the answer means. A timeout or an
``aiohttp.ClientError`` never reaches the judge: it is a ``retry`` attempt
whose note is scrubbed of secrets (aiohttp puts the request URL, query and
all, into its exception messages).

:func:`read` is the same request for a caller that wants the answer itself
(Convertr's form fields, for ``relay config check``): it raises
:class:`~relay.errors.NoAnswer` when none came.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay.adapters.base import Attempt, Outcome
from relay.adapters.classify import excerpt, scrub
from relay.errors import NoAnswer
from relay.retry import parse_retry_after

__all__ = ["Answer", "attempt_for", "read", "send"]


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's HTTP answer, read in full."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    duration_ms: float

    @property
    def retry_after_s(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout_s: float,
    secrets: Iterable[str],
    judge: Callable[[Answer], Attempt],
    **kwargs: Any,
) -> Attempt:
    """Make one request; ``judge``'s attempt for its answer, or a ``retry`` attempt when none came.

    Redirects are not followed: a 3xx goes to the judge as it is (see :mod:`.classify`).
    """
    try:
        answer = await read(session, method, url, timeout_s=timeout_s, secrets=secrets, **kwargs)
    except NoAnswer as exc:
        return Attempt(Outcome.retry, None, exc.duration_ms, error=exc.error, note=str(exc))
    return judge(answer)


async def read(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    timeout_s: float,
    secrets: Iterable[str],
    **kwargs: Any,
) -> Answer:
    """Make one request and return its :class:`Answer`; raise ``NoAnswer`` when none came.

    Redirects are not followed: a 3xx is returned as it is. ``NoAnswer`` carries
    no cause: aiohttp's exception holds the URL, secrets and all.
    """
    start = time.perf_counter()
    try:
        async with session.request(
            method,
            url,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
            **kwargs,
        ) as resp:
            body = await resp.read()
            return Answer(resp.status, body, resp.headers, _ms_since(start))
    except TimeoutError:  # before ClientError: aiohttp's timeout errors are both
        note = f"no answer within {timeout_s:g} s"
        raise NoAnswer(note, error="TimeoutError", duration_ms=_ms_since(start)) from None
    except aiohttp.ClientError as exc:
        note = scrub(f"{type(exc).__name__}: {exc}", secrets)[:500]
        raise NoAnswer(note, error=type(exc).__name__, duration_ms=_ms_since(start)) from None


def attempt_for(
    answer: Answer,
    outcome: Outcome,
    secrets: Iterable[str],
    *,
    note: str | None = None,
    upstream_id: str | None = None,
    error: str | None = None,
) -> Attempt:
    """The attempt record for an answer: excerpt scrubbed, ``http_<status>`` unless delivered."""
    if error is None and outcome is not Outcome.delivered:
        error = f"http_{answer.status}"
    secrets = tuple(secrets)
    return Attempt(
        outcome,
        answer.status,
        answer.duration_ms,
        excerpt=excerpt(answer.body, secrets),
        error=None if error is None else scrub(error, secrets),
        retry_after_s=answer.retry_after_s,
        upstream_id=upstream_id,
        note=None if note is None else scrub(note, secrets),
    )


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
