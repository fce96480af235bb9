"""Cheap bounds on an ingest body, checked before any normalization.

A body well under the size limit can still cost the event loop dearly when it
is made of many small values (40,000 fields took half a second to refuse), and
every client of the API waits meanwhile. So the work is bounded first:

- the whole JSON body: at most :data:`MAX_BODY_VALUES` values, counted on the
  raw bytes before parsing (413); a form: at most :data:`MAX_FORM_FIELDS`
  fields (413; see ``relay.api.body``);
- each item: at most :data:`MAX_ITEM_KEYS` keys in any one object,
  :data:`MAX_ITEM_DEPTH` levels of objects and arrays and :data:`MAX_ITEM_VALUES`
  values in all (422 for that item only: the rest of a batch still queues).

The same walk refuses what relay could not keep exactly as sent (422 naming
the field): a NUL character in a string or a name, an integer beyond 64 bits,
a number a 64-bit float cannot hold (``1e-400``, 20 significant digits).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

from relay.errors import FieldError

__all__ = [
    "MAX_BODY_VALUES",
    "MAX_FORM_FIELDS",
    "MAX_ITEM_DEPTH",
    "MAX_ITEM_KEYS",
    "MAX_ITEM_VALUES",
    "SLICE_S",
    "Slicer",
    "check_item",
    "may_be_inexact",
    "too_many_values",
]

#: JSON values (objects, arrays, strings, numbers, ...; not keys) in one body:
#: a full batch of 500 items with 49 fields each.
MAX_BODY_VALUES: Final = 25_000
#: Keys in any one object of an item (its top level, ``traits``, a trait value):
#: the 200 custom traits the normalizer keeps, the canonical fields and room to spare.
MAX_ITEM_KEYS: Final = 250
#: Values in one item, at every level (a form is one item: its fields).
MAX_ITEM_VALUES: Final = 1_000
#: Objects and arrays nested in one item: the item, a ``{"lead": ...}`` wrapper,
#: ``traits`` and the 5 levels a custom trait value may have.
MAX_ITEM_DEPTH: Final = 8
#: Fields of a form body, which is always one item.
MAX_FORM_FIELDS: Final = MAX_ITEM_VALUES

#: Longest a request's bounded steps (an item walked, an item normalized) run
#: before it lets other requests in: a big batch is many small steps.
SLICE_S: Final = 0.0002

#: What orjson and the stored events hold exactly: a signed or an unsigned 64-bit integer.
_INT_RANGE: Final = range(-(2**63), 2**64)
#: Maps a JSON text's digits and "." to "0", "e" and "E" to "e", signs to "s", the rest to " ".
_NUMBER_SHAPE: Final = bytes(
    ord("0") if c in b"0123456789." else ord("e") if c in b"eE" else ord("s") if c in b"+-" else 32
    for c in range(256)
)
_NUL_MSG: Final = "contains a NUL character (U+0000), which relay does not accept"


def too_many_values(raw: bytes) -> bool:
    """Whether the JSON text ``raw`` may hold more than :data:`MAX_BODY_VALUES` values.

    Every value but the first follows a comma or an opening bracket, so counting
    those bytes bounds the values from above at C speed (an empty ``[]`` or ``{}``
    counts one too many). Only when that bound is over the limit are the strings
    (where such bytes may also stand) taken out; and when there are so many
    strings that they alone are over it (each is a key or a value, each key has
    a value), that is the answer without splitting.
    """
    if _structural(raw) < MAX_BODY_VALUES:
        return False
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")  # now every " opens or closes a string
    quotes = raw.count(b'"')
    if quotes // 4 > MAX_BODY_VALUES:
        return True
    outside = b"".join(raw.split(b'"')[::2]) if quotes else raw
    return _structural(outside) + 1 > MAX_BODY_VALUES


def _structural(raw: bytes) -> int:
    return len(raw) - len(raw.translate(None, b",[{"))


def may_be_inexact(raw: bytes) -> bool:
    """Whether the JSON text ``raw`` may hold a number orjson cannot keep exactly.

    Such a number has 16 or more digits in a row (a ``.`` among them counts), or a
    3-digit exponent (``1e-400``): a number with at most 15 significant digits and
    a 2-digit exponent survives a 64-bit float (C's ``DBL_DIG``). True is only a
    maybe (the bytes of strings are looked at too); False is certain.
    """
    shape = raw.translate(_NUMBER_SHAPE)
    return b"0" * 16 in shape or b"e000" in shape or b"es000" in shape


class _Full(Exception):
    """The item has more values than :data:`MAX_ITEM_VALUES`: stop walking it."""


class _Walk:
    """One item's walk; ``loc`` lists are built only for containers and errors."""

    __slots__ = ("errors", "floats", "nul", "values")

    def __init__(self, *, nul: bool) -> None:
        self.errors: list[FieldError] = []
        self.floats = False  # a float was seen: the body is read again for the exact numbers
        self.nul = nul
        self.values = 0

    def container(self, obj: dict[Any, Any] | list[Any], loc: list[str | int], depth: int) -> None:
        if depth >= MAX_ITEM_DEPTH:
            msg = f"nested too deeply: at most {MAX_ITEM_DEPTH} levels of objects and arrays"
            self.errors.append({"loc": loc, "msg": msg})
            return
        if isinstance(obj, dict) and len(obj) > MAX_ITEM_KEYS:
            msg = f"too many fields in one object: {len(obj)}, at most {MAX_ITEM_KEYS}"
            self.errors.append({"loc": loc, "msg": msg})
            return
        self.values += len(obj)
        if self.values > MAX_ITEM_VALUES:
            raise _Full
        pairs: Iterable[tuple[Any, Any]] = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in pairs:
            if self.nul and isinstance(k, str) and "\x00" in k:
                self.errors.append({"loc": [*loc, k], "msg": "the field name " + _NUL_MSG})
            kind = type(v)
            if kind is str:
                if self.nul and "\x00" in v:
                    self.errors.append({"loc": [*loc, k], "msg": _NUL_MSG})
            elif kind is dict or kind is list:
                self.container(v, [*loc, k], depth + 1)
            elif kind is float:
                self.floats = True
            elif kind is int:
                if v not in _INT_RANGE:
                    msg = "an integer beyond 64 bits cannot be kept exactly; send it as a string"
                    self.errors.append({"loc": [*loc, k], "msg": msg})
            elif kind is Decimal:
                obj[k] = self.number(v, [*loc, k])  # same keys or indexes: safe while iterating

    def number(self, exact: Decimal, loc: list[str | int]) -> float | None:
        """The float for a JSON number read exactly, or None after an error."""
        value = float(exact)
        shortest = repr(value)
        if math.isfinite(value) and (shortest == str(exact) or Decimal(shortest) == exact):
            return value
        if value == 0:
            msg = "too close to zero for a 64-bit float (it would become 0); send it as a string"
        elif not math.isfinite(value):
            msg = "too large for a 64-bit float; send it as a string"
        else:
            msg = (
                "more significant digits than a 64-bit float keeps (about 17); "
                "send it as a string to keep every digit"
            )
        self.errors.append({"loc": loc, "msg": msg})
        return None


def check_item(item: Any, *, nul: bool = True) -> tuple[list[FieldError], bool]:
    """The problems of one raw item (``loc`` relative to it) and whether it holds a float.

    Costs at most :data:`MAX_ITEM_VALUES` steps whatever the item. ``nul=False``
    skips looking for NUL characters (a JSON body without ``\\u0000`` has none).
    Numbers parsed as :class:`~decimal.Decimal` (the exact second reading of a
    body with floats) are checked and replaced by their float in place.
    """
    walk = _Walk(nul=nul)
    if isinstance(item, dict | list):
        try:
            walk.container(item, [], 0)
        except _Full:
            msg = f"too many values: more than {MAX_ITEM_VALUES} fields and array elements"
            walk.errors.append({"loc": [], "msg": msg})
    return walk.errors, walk.floats


class Slicer:
    """Lets other requests in when this one has worked :data:`SLICE_S` since it last did.
    Ticked between items (not before the first: nothing was worked yet), so a request
    of one item, most of them, makes no call."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def tick(self) -> None:
        if time.perf_counter() - self._since > SLICE_S:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
