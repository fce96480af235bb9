"""The ingest body as /openapi.json declares it: every document it admits is accepted.

relay accepts more than this (aliases, flattened keys, ConveYour and wrapped
shapes, national phone formats, custom fields of any name and JSON value); the
descriptions say so. The schema itself is the canonical shape, strict enough
that a client generated from it, or a fuzzer, never sends what relay rejects:
an email or a phone is required, and the patterns are subsets of the checks in
:mod:`relay.normalize` (an email that email-validator accepts as written, an
E.164 number phonenumbers always finds possible).
"""

from __future__ import annotations

from typing import Any

from relay.models import CANONICAL_FIELDS, MAX_TRACK_EVENTS
from relay.normalize import (
    ALIASES,
    MAX_ADDRESS_CHARS,
    MAX_CUSTOM_TRAITS,
    MAX_EMAIL_CHARS,
    MAX_FIELD_CHARS,
)
from relay.trackevents import MAX_EVENT_NAME_CHARS

__all__ = ["form_body", "json_body"]

# Short ASCII local part and host labels, a 2- or 3-letter top-level domain (no
# special-use name, such as .test or .local, is that short).
_EMAIL = (
    r"^[A-Za-z0-9]{1,30}([._+-][A-Za-z0-9]{1,10}){0,2}"
    r"@([A-Za-z0-9]{1,30}(-[A-Za-z0-9]{1,30})?\.){1,3}[A-Za-z]{2,3}$"
)
# North American and UK mobile numbers: always of a possible length.
_PHONE = r"^\+(1[2-9][0-9]{9}|447[0-9]{9})$"
# Lower-case words joined by single underscores: the name relay keeps as sent.
_TRAIT_NAME = r"^[a-z][a-z0-9]{0,29}(_[a-z0-9]{1,20}){0,3}$"
#: Custom fields the schema allows per item (relay takes up to MAX_CUSTOM_TRAITS).
_SCHEMA_TRAITS = 20
_SAFE_INTEGER = 2**53
#: Text without NUL (U+0000), which relay refuses wherever it appears.
_NO_NUL = r"^[^\u0000]*$"
#: What Python's str.strip() takes for white space, spelled out: JSON Schema's \s is
#: ECMA-262's, which leaves out U+001C-U+001F and U+0085 (NEL).
_SPACE = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
#: An event name: not only white space, and no NUL.
_EVENT_NAME = rf"^[^\u0000]*[^\u0000{_SPACE}][^\u0000]*$"
#: A UTC time in ISO 8601 on a day every month has (fromisoformat reads it, Z and all).
_ISO_UTC = (
    r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
)


def _item(*, form: bool) -> dict[str, Any]:
    text: dict[str, Any] = {"type": "string"} if form else {"type": ["string", "null"]}
    text["pattern"] = _NO_NUL
    props: dict[str, Any] = {
        "email": {
            "type": "string",
            "maxLength": MAX_EMAIL_CHARS,
            "pattern": _EMAIL,
            "description": "Checked and lower-cased. Any address email-validator accepts "
            "is taken; the pattern is a subset that always is",
        },
        "phone": {
            "type": "string",
            "pattern": _PHONE,
            "description": "Stored as E.164. Any number with a country code (or of the "
            "default region) that phonenumbers finds possible is taken; the pattern is a "
            "subset that always is",
        },
    }
    for name in CANONICAL_FIELDS:
        if name not in props:
            limit = MAX_ADDRESS_CHARS if name == "address" else MAX_FIELD_CHARS
            props[name] = {**text, "maxLength": limit}
    if not form:
        taken = sorted({*CANONICAL_FIELDS, *(a for names in ALIASES.values() for a in names)})
        traits_like: dict[str, Any] = {
            "type": "object",
            "maxProperties": _SCHEMA_TRAITS,
            "propertyNames": {"pattern": _TRAIT_NAME},
            "additionalProperties": {
                "type": ["string", "boolean", "integer", "null"],
                "maxLength": 1000,
                "pattern": _NO_NUL,
                "minimum": -_SAFE_INTEGER,
                "maximum": _SAFE_INTEGER,
            },
        }
        props["traits"] = {
            **traits_like,
            "description": f"Custom fields (relay takes up to {MAX_CUSTOM_TRAITS}, of any "
            "JSON value); a name that is a canonical field or one of its aliases is read "
            "as that field",
            "propertyNames": {"pattern": _TRAIT_NAME, "not": {"enum": taken}},
        }
        props["events"] = {
            "type": "array",
            "maxItems": MAX_TRACK_EVENTS,
            "description": "Track events, sent to ConveYour (/api/analytics/track) in order "
            "after the contact's identify; Convertr ignores them, webhooks get them. Forms "
            "send them as numbered keys (events__0__event, events[0][event])",
            "items": {
                "type": "object",
                "required": ["event"],
                "additionalProperties": False,
                "properties": {
                    "event": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_EVENT_NAME_CHARS,
                        "pattern": _EVENT_NAME,
                    },
                    "properties": {**traits_like, "description": "Details of the event"},
                    "timestamp": {
                        "description": "ISO 8601 text (any that Python's fromisoformat "
                        "reads, Z allowed) or epoch seconds (0 to 10^11); the pattern is a "
                        "subset that always is",
                        "oneOf": [
                            {"type": "string", "pattern": _ISO_UTC},
                            {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
                        ],
                    },
                },
            },
        }
    return {
        "type": "object",
        "description": "The canonical shape. Also accepted: aliases (firstName, mobile, "
        "company_name, ...), flattened keys (traits__city, traits.city, traits[city]), "
        'ConveYour style {"id": "$email", "traits": {...}} and wrapped '
        '{"contact": {...}} / {"lead": {...}}; unknown fields are kept as custom traits',
        "properties": props,
        "anyOf": [{"required": ["email"]}, {"required": ["phone"]}],
        "additionalProperties": False,
    }


def json_body(*, max_batch: int) -> dict[str, Any]:
    """One item, or a batch of them."""
    one = _item(form=False)
    batch = {"type": "array", "minItems": 1, "maxItems": max_batch, "items": one}
    return {"oneOf": [one, batch]}


def form_body() -> dict[str, Any]:
    """A form is one item of text fields (``traits[city]`` style keys are accepted too)."""
    return _item(form=True)
