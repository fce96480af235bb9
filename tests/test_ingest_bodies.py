"""Ingest bodies: bounded work before normalizing, values kept exactly or refused by name."""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import redis_keys
from relay.api.bounds import (
    MAX_BODY_VALUES,
    MAX_FORM_FIELDS,
    MAX_ITEM_DEPTH,
    MAX_ITEM_KEYS,
    MAX_ITEM_VALUES,
    may_be_inexact,
    too_many_values,
)
from tests.events import total

KeyMaker = Callable[..., Awaitable[str]]
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def headers(make_key: KeyMaker) -> dict[str, str]:
    key = await make_key("write:leads", "write:contacts", "read:events")
    return {"Authorization": f"Bearer {key}"}


async def _post(
    client: TestClient[Any, Any], headers: dict[str, str], body: Any, ctype: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/leads", data=body, headers={**headers, **ctype})
    return resp.status, await resp.json()


async def _payload(client: TestClient[Any, Any], headers: dict[str, str], event_id: str) -> Any:
    event = await client.get(f"/v1/events/{event_id}", headers=headers)
    return (await event.json())["payload"]


# --- item 5: values are kept exactly or refused, never altered ---------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"123456789012345678901234567890", "beyond 64 bits"),
        (b"18446744073709551616", "beyond 64 bits"),  # 2**64
        (b"-9223372036854775809", "beyond 64 bits"),  # -(2**63) - 1
        (b"1e-400", "would become 0"),
        (b"0.12345678901234567890123", "significant digits"),
        (b"123456789.123456789", "significant digits"),
        (b'"a\\u0000b"', "NUL"),
    ],
    ids=["huge-int", "2**64", "below-int64", "underflow", "too-precise", "18-digits", "nul"],
)
async def test_json_value_that_cannot_be_kept_is_422_naming_the_field(
    client: TestClient[Any, Any], redis: Redis, headers: dict[str, str], value: bytes, says: str
) -> None:
    body = b'{"email": "a@example.com", "traits": {"x": ' + value + b', "y": 1.5}}'
    status, answer = await _post(client, headers, body, JSON)
    assert status == 422, answer
    assert answer["errors"] == [{"loc": ["body", "traits", "x"], "msg": answer["errors"][0]["msg"]}]
    assert says in answer["errors"][0]["msg"]
    assert await total(redis, "ZCARD", redis_keys.events_index) == 0


async def test_nul_in_a_field_name_is_422(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    status, answer = await _post(
        client, headers, b'{"email": "a@example.com", "n\\u0000": 1}', JSON
    )
    assert status == 422
    assert answer["errors"][0]["loc"] == ["body", "n\x00"]
    assert "field name contains a NUL" in answer["errors"][0]["msg"]


def test_only_long_digit_runs_and_big_exponents_may_be_inexact() -> None:
    assert not may_be_inexact(b'[1.5, 123456789012345, 1e99, 1E-99, "+44 7123 456789"]')
    for number in (b"1.234567890123456", b"1e-400", b"1E+300", b"1e0400", b"12345678.12345678"):
        assert may_be_inexact(b"[" + number + b"]"), number


async def test_a_long_digit_run_in_a_string_beside_floats_is_kept(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    body = b'{"email": "a@example.com", "ref": "12345678901234567890", "score": 0.5, "n": 7}'
    status, answer = await _post(client, headers, body, JSON)
    assert status == 202, answer
    payload = await _payload(client, headers, answer["id"])
    assert payload["traits"] == {"ref": "12345678901234567890", "score": 0.5, "n": 7}
    assert type(payload["traits"]["n"]) is int
    status, answer = await _post(client, headers, body.replace(b"1234567890", b""), JSON)
    assert status == 202, answer  # read once: no number here can be inexact
    assert (await _payload(client, headers, answer["id"]))["traits"]["score"] == 0.5


async def test_numbers_that_fit_are_kept_exactly(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    body = (
        b'[{"email": "a@example.com", "u64": 18446744073709551615, "i64": -9223372036854775808,'
        b' "half": 1.5, "tenth": 0.1, "tiny": 5e-324, "zero": 0.0, "hundred": 1e2},'
        b' {"email": "b@example.com", "big": 1e-400}]'
    )
    status, answer = await _post(client, headers, body, JSON)
    assert status == 207, answer
    assert answer["rejected"][0]["errors"][0]["loc"] == ["body", 1, "big"]
    payload = await _payload(client, headers, answer["accepted"][0]["id"])
    assert payload["traits"] == {
        "u64": 2**64 - 1,
        "i64": -(2**63),
        "half": 1.5,
        "tenth": 0.1,
        "tiny": 5e-324,
        "zero": 0.0,
        "hundred": 100.0,
    }


@pytest.mark.parametrize(
    "body",
    [b"email=a%40example.com&city=Dall%E9s", b"email=a%40example.com&city=Dall\xe9s"],
    ids=["percent-encoded", "raw"],
)
async def test_invalid_utf8_in_a_urlencoded_form_is_422_naming_the_field(
    client: TestClient[Any, Any], headers: dict[str, str], body: bytes
) -> None:
    status, answer = await _post(client, headers, body, FORM)
    assert status == 422, answer
    assert [e["loc"] for e in answer["errors"]] == [["body", "city"]]
    assert "not valid utf-8" in answer["errors"][0]["msg"]
    assert "\ufffd" not in orjson.dumps(answer).decode()


async def test_invalid_utf8_in_a_multipart_form_is_422_naming_the_field(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    body = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % pair
        for pair in ((b"email", b"a@example.com"), (b"city", b"Dall\xe9s"))
    )
    ctype = {"Content-Type": "multipart/form-data; boundary=b"}
    resp = await client.post("/v1/leads", data=body + b"--b--\r\n", headers={**headers, **ctype})
    answer = await resp.json()
    assert resp.status == 422, answer
    assert [e["loc"] for e in answer["errors"]] == [["body", "city"]]


async def test_a_good_form_in_another_charset_is_read_with_it(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    ctype = {"Content-Type": "application/x-www-form-urlencoded; charset=latin-1"}
    status, answer = await _post(client, headers, b"email=a%40example.com&city=Dall%E9s", ctype)
    assert status == 202, answer
    payload = await _payload(client, headers, answer["id"])
    assert (payload["city"], payload["traits"]) == ("Dallés", {})


async def test_nul_in_a_form_is_422(client: TestClient[Any, Any], headers: dict[str, str]) -> None:
    status, answer = await _post(client, headers, b"email=a%40example.com&note=a%00b", FORM)
    assert status == 422
    assert answer["errors"][0]["loc"] == ["body", "note"]


@pytest.mark.parametrize(
    ("body", "ctype", "loc"),
    [
        (b"email=a%40example.com&traits=foo&traits%5Bcity%5D=Dallas", FORM, "traits[city]"),
        (b'{"email": "a@example.com", "traits": "foo", "traits__city": "Dallas"}', JSON, None),
    ],
    ids=["form", "json"],
)
async def test_a_name_both_value_and_fields_is_422_not_kept_flat(
    client: TestClient[Any, Any], headers: dict[str, str], body: bytes, ctype: Any, loc: Any
) -> None:
    status, answer = await _post(client, headers, body, ctype)
    assert status == 422, answer
    assert answer["errors"][0]["loc"] == ["body", loc or "traits__city"]
    assert "conflicts with 'traits', which was sent as a string" in answer["errors"][0]["msg"]


# --- item 6: a form over the field limit says so ----------------------------------


async def test_form_with_too_many_fields_says_so(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    fields = "&".join(f"f{i}=x" for i in range(MAX_FORM_FIELDS + 1))
    body = f"email=a%40example.com&{fields}".encode()
    assert len(body) < 10_000
    status, answer = await _post(client, headers, body, FORM)
    assert status == 413
    assert answer["detail"].startswith(f"the form has more than {MAX_FORM_FIELDS} fields")
    assert "bytes" not in answer["detail"]
    form = FormData()
    for i in range(MAX_FORM_FIELDS + 1):
        form.add_field(f"f{i}", "x")
    resp = await client.post("/v1/leads", data=form(), headers=headers)
    assert resp.status == 413
    assert (await resp.json())["errors"] == [
        {"loc": ["body"], "msg": f"more than {MAX_FORM_FIELDS} fields"}
    ]


async def test_form_at_the_field_limit_is_read(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    fields = "&".join(f"f{i}=x" for i in range(MAX_FORM_FIELDS - 1))
    status, answer = await _post(client, headers, f"email=a%40example.com&{fields}".encode(), FORM)
    # read (not refused for its count): then the bound on one object applies
    assert status == 422
    assert answer["errors"][0] == {
        "loc": ["body"],
        "msg": f"too many fields in one object: {MAX_FORM_FIELDS}, at most {MAX_ITEM_KEYS}",
    }


# --- item 2: the work is bounded before normalizing -------------------------------


def test_value_count_ignores_what_is_inside_strings() -> None:
    commas = '"' + ",[{" * MAX_BODY_VALUES + '\\",[{"'
    assert not too_many_values(orjson.dumps({"email": "a@example.com", "note": commas}))
    assert not too_many_values(orjson.dumps([{"a": i} for i in range(MAX_BODY_VALUES // 2 - 1)]))
    assert too_many_values(orjson.dumps([{"a": i} for i in range(MAX_BODY_VALUES // 2)]))
    assert too_many_values(orjson.dumps(["s"] * (MAX_BODY_VALUES * 2)))
    assert too_many_values(b"[" + b"{}," * MAX_BODY_VALUES + b"{}]")


async def test_forty_thousand_fields_are_refused_by_count(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    body = orjson.dumps({"email": "a@example.com", **{f"f{i}": "x" for i in range(40_000)}})
    status, answer = await _post(client, headers, body, JSON)
    assert status == 413
    assert answer["errors"] == [{"loc": ["body"], "msg": f"more than {MAX_BODY_VALUES} values"}]


async def test_an_item_out_of_bounds_rejects_only_that_item(
    client: TestClient[Any, Any], redis: Redis, headers: dict[str, str]
) -> None:
    deep: Any = "x"
    for _ in range(MAX_ITEM_DEPTH):
        deep = [deep]
    batch = [
        {"email": "good@example.com"},
        {"email": "a@example.com", "traits": {f"f{i}": "x" for i in range(MAX_ITEM_KEYS + 1)}},
        {"email": "b@example.com", "deep": deep},
        {"email": "c@example.com", "tags": [list(range(100))] * (MAX_ITEM_VALUES // 100)},
    ]
    status, answer = await _post(client, headers, orjson.dumps(batch), JSON)
    assert status == 207, answer
    assert [a["index"] for a in answer["accepted"]] == [0]
    errors = {r["index"]: r["errors"] for r in answer["rejected"]}
    assert errors[1] == [
        {
            "loc": ["body", 1, "traits"],
            "msg": f"too many fields in one object: {MAX_ITEM_KEYS + 1}, at most {MAX_ITEM_KEYS}",
        }
    ]
    assert errors[2][0]["loc"] == ["body", 2, "deep", *[0] * (MAX_ITEM_DEPTH - 1)]
    assert "nested too deeply" in errors[2][0]["msg"]
    assert errors[3] == [
        {
            "loc": ["body", 3],
            "msg": f"too many values: more than {MAX_ITEM_VALUES} fields and array elements",
        }
    ]
    assert await total(redis, "XLEN", functools.partial(redis_keys.queue, "convertr")) == 1


async def _p50(client: TestClient[Any, Any], headers: dict[str, str], n: int) -> float:
    """Median time of a small valid lead, sent ``n`` times one after the other."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        resp = await client.post("/v1/leads", json={"email": f"p{i}@example.com"}, headers=headers)
        assert resp.status == 202
        await resp.read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def test_worst_bodies_do_not_stall_other_clients(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    """Other clients' median latency while one sender posts the worst bodies back to back,
    against the same median on the idle server (before the bounds: about 1000 times)."""
    worst = [
        orjson.dumps({"email": "a@example.com", **{f"f{i}": "x" for i in range(40_000)}}),
        orjson.dumps({"email": "a@example.com", "traits": {f"f__{i}": "x" for i in range(40_000)}}),
        # just under the body's bound: every item normalized, none valid
        orjson.dumps([{f"f{j}": "x" for j in range(47)} for _ in range(500)]),
        # the same with floats and a long digit run: read a second time, exactly
        orjson.dumps([{"id": "1" * 20, **{f"f{j}": 1.5 for j in range(46)}} for _ in range(500)]),
    ]
    assert all(len(body) < 1_048_576 for body in worst)
    await _p50(client, headers, 20)  # warm up
    idle = await _p50(client, headers, 100)
    stop = asyncio.Event()
    sent: list[int] = []

    async def sender() -> None:
        while not stop.is_set():
            body = worst[len(sent) % len(worst)]
            resp = await client.post("/v1/leads", data=body, headers={**headers, **JSON})
            await resp.read()
            assert resp.status in (413, 422)  # refused (by count after the fix, 422 before)
            sent.append(resp.status)

    task = asyncio.create_task(sender())
    try:
        await asyncio.sleep(0.05)
        loaded = await _p50(client, headers, 100)
    finally:
        stop.set()
        await task
    assert len(sent) >= len(worst)  # the worst bodies did arrive while measuring
    assert loaded < 10 * idle, f"p50 idle {idle * 1000:.2f} ms, loaded {loaded * 1000:.2f} ms"
