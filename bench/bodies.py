"""``python -m bench.bodies``: the event-loop time of the worst ingest bodies, one by one.

Each body goes through what ``POST /v1/leads`` does with it after reading it:
``relay.api.body.json_items`` (the bounds, the parse, the walk) and the
normalizer for every item that passed. No HTTP, no Redis: the figure is the
time no other request can run. Bodies are under the 1 MiB limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import orjson

from relay.api.body import json_items
from relay.errors import RequestError, ValidationFailed
from relay.normalize import normalize_item

ROUNDS = 5


def bodies() -> Iterator[tuple[str, bytes]]:
    """``(what, raw)`` for each worst case."""
    yield "40,000 top-level fields", orjson.dumps({f"f{i}": "x" for i in range(40_000)})
    yield "40,000 fields in traits", orjson.dumps({"traits": {f"f{i}": "x" for i in range(40_000)}})
    yield "40,000 flattened keys", orjson.dumps({f"traits__f{i}": "x" for i in range(40_000)})
    yield "340,000 empty objects", b"[" + b",".join([b"{}"] * 340_000) + b"]"
    yield "95,000 keys, 1 MiB", orjson.dumps({f"k{i}": 0 for i in range(95_000)})
    yield (
        "nested lists",
        orjson.dumps({"email": "a@example.com", "t": [[{"a": [1] * 40}] * 20] * 40}),
    )
    yield "batch 500 x 47 fields, no email", orjson.dumps([{f"f{j}": "x" for j in range(47)}] * 500)
    valid = [
        {"email": f"u{i}@example.com", **{f"f{j}": "x" for j in range(46)}} for i in range(500)
    ]
    yield "batch 500 x 47 fields, valid", orjson.dumps(valid)
    floats = [
        {"email": f"u{i}@example.com", **{f"f{j}": 1.5 for j in range(46)}} for i in range(500)
    ]
    yield "batch 500 x 46 floats", orjson.dumps(floats)
    floats[0]["id"] = "12345678901234567890"  # a long digit run: the body is read again, exactly
    yield "the same, read twice (exactly)", orjson.dumps(floats)


async def handle(raw: bytes) -> str:
    """What the API answers for ``raw``, after the work it does for it."""
    try:
        items, _ = await json_items(raw, max_batch=500)
    except RequestError as exc:
        return str(exc.status)
    statuses = set()
    for item in items:
        try:
            if isinstance(item, ValidationFailed):
                raise item
            normalize_item(item, kind="lead")
            statuses.add("202")
        except ValidationFailed:
            statuses.add("422")
    return "/".join(sorted(statuses))


async def main() -> None:
    print(f"{'body':34} {'KiB':>6} {'answer':>8} {'ms (best of 5)':>15}")
    for what, raw in bodies():
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            answer = await handle(raw)
            best = min(best, time.perf_counter() - start)
        print(f"{what:34} {len(raw) / 1024:6.0f} {answer:>8} {best * 1000:15.1f}")


if __name__ == "__main__":
    asyncio.run(main())
