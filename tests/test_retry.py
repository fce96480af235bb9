"""Retry policy: schedule steps, its end, jitter bounds, Retry-After, rejected credentials."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.retry import DEFAULT_SCHEDULE_S, JITTER, next_delay_s, parse_retry_after, window_s
from relay.settings import DEFAULT_RETRY_SCHEDULE_S

SEEDS = range(500)


class _Fixed(random.Random):
    """uniform() always returns one end of its range: the jitter's extremes."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


def test_default_schedule_is_the_settings_one() -> None:
    assert DEFAULT_SCHEDULE_S == (5, 30, 120, 600, 1800, 3600, 10800, 21600, 43200, 86400)
    assert tuple(DEFAULT_RETRY_SCHEDULE_S) == DEFAULT_SCHEDULE_S


@pytest.mark.parametrize(
    ("attempt", "step"),
    [
        (1, 5),
        (2, 30),
        (3, 120),
        (4, 600),
        (5, 1800),
        (6, 3600),
        (7, 10800),
        (8, 21600),
        (9, 43200),
        (10, 86400),
    ],
)
def test_steps_of_the_default_schedule(attempt: int, step: float) -> None:
    low = next_delay_s(attempt, DEFAULT_SCHEDULE_S, rng=_Fixed("low"))
    high = next_delay_s(attempt, DEFAULT_SCHEDULE_S, rng=_Fixed("high"))
    assert low == pytest.approx(step * 0.8)
    assert high == pytest.approx(step * 1.2)


@pytest.mark.parametrize("retry", [11, 12, 1000])
def test_the_default_schedule_ends_after_ten_retries(retry: int) -> None:
    assert next_delay_s(retry, DEFAULT_SCHEDULE_S, rng=_Fixed("high")) is None
    # However long the upstream asked us to wait: the schedule is spent.
    assert next_delay_s(retry, DEFAULT_SCHEDULE_S, retry_after_s=5) is None


@pytest.mark.parametrize("attempt", [1, 2, 5, 10])
def test_jitter_stays_within_twenty_percent(attempt: int) -> None:
    step = DEFAULT_SCHEDULE_S[attempt - 1]
    delays = [
        next_delay_s(attempt, DEFAULT_SCHEDULE_S, rng=random.Random(seed)) or 0.0 for seed in SEEDS
    ]
    assert all(step * (1 - JITTER) <= d <= step * (1 + JITTER) for d in delays)
    # It really is spread (not a constant), over most of the band on both sides.
    assert min(delays) < step * 0.85
    assert max(delays) > step * 1.15
    assert len(set(delays)) == len(delays)


def test_jitter_without_an_rng_is_in_bounds() -> None:
    delays = [next_delay_s(1, [10]) or 0.0 for _ in range(200)]
    assert all(8 <= d <= 12 for d in delays)
    assert len(set(delays)) > 1


def test_after_the_last_step_nothing() -> None:
    schedule = [1.0, 2.0, 7.0]
    assert next_delay_s(3, schedule, rng=_Fixed("low")) == pytest.approx(7 * 0.8)
    for retry in range(4, 200):
        assert next_delay_s(retry, schedule, rng=_Fixed("low")) is None
    assert next_delay_s(1, [0.05]) is not None
    assert next_delay_s(2, [0.05]) is None


def test_the_window_is_the_sum_of_the_steps() -> None:
    assert window_s(DEFAULT_SCHEDULE_S) == 168_155
    assert window_s([0.05, 0.05]) == pytest.approx(0.1)
    # What the README promises, from the first attempt to the last, and with the jitter.
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())

    def hm(seconds: float) -> str:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} m"

    window = window_s(DEFAULT_SCHEDULE_S)
    assert f"11 attempts over about {hm(window)}" in readme
    assert f"{hm(window * (1 - JITTER))} to {hm(window * (1 + JITTER))} with the jitter" in readme


def test_retry_after_wins_when_longer() -> None:
    rng = random.Random(3)
    assert next_delay_s(1, [5], retry_after_s=90, rng=rng) == 90
    assert next_delay_s(1, [5], retry_after_s=6.5, rng=_Fixed("low")) == 6.5
    # Shorter than the backoff: the backoff stands.
    assert next_delay_s(3, [5, 30, 120], retry_after_s=10, rng=_Fixed("low")) == 96
    assert next_delay_s(1, [5], retry_after_s=None, rng=_Fixed("high")) == 6
    assert next_delay_s(1, [5], retry_after_s=0, rng=_Fixed("high")) == 6


def test_rejected_credentials_use_the_long_end() -> None:
    def step(attempt: int, schedule: tuple[float, ...] = DEFAULT_SCHEDULE_S) -> float:
        delay = next_delay_s(attempt, schedule, rng=_Fixed("low"), credentials=True)
        assert delay is not None  # never dead-lettered
        return delay / 0.8

    assert [round(step(n)) for n in range(1, 9)] == [
        600,
        1800,
        3600,
        10800,
        21600,
        43200,
        86400,
        86400,
    ]
    # Long past the schedule's end: its last step, forever.
    assert round(step(1000)) == 86400
    # No step that long: the last step, forever.
    assert [round(step(n, (1, 2, 3))) for n in (1, 2, 9, 1000)] == [3, 3, 3, 3]
    # A schedule whose first step is long already starts there.
    assert [round(step(n, (900, 1000))) for n in (1, 2, 3)] == [900, 1000, 1000]
    # Retry-After still counts.
    assert next_delay_s(1, (5,), retry_after_s=10, credentials=True, rng=_Fixed("low")) == 10


@pytest.mark.parametrize("retry", [0, -1])
def test_retries_count_from_one(retry: int) -> None:
    with pytest.raises(ValueError, match="count from 1"):
        next_delay_s(retry, DEFAULT_SCHEDULE_S)


def test_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        next_delay_s(1, [])


NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("86400", 86400.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # obsolete RFC 850
        ("Wed Oct 21 07:30:00 2015", 120.0),  # obsolete asctime
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: now
    ],
)
def test_parse_retry_after(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    # The last one is two non-ASCII digits.
    [None, "", "   ", "soon", "-5", "-0", "1.5", "1e3", "5 s", "Wed, 99 Foo", "\uff11\uff12"],
)
def test_parse_retry_after_garbage_and_negative(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_parse_retry_after_defaults_to_the_current_time() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=100)
    header = soon.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 98 <= (parse_retry_after(header) or 0) <= 100


def test_parse_retry_after_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=naive) == 10.0
