"""Turn one ingest item, in any accepted shape, into a checked :class:`Contact` or :class:`Lead`.

Pure functions: no I/O, so the API and tests call them directly. Every problem in
an item is collected and raised together as one :class:`ValidationFailed`, with
``loc`` relative to the item (the API prefixes ``"body"`` and the batch index).

Example::

    >>> normalize_item({"id": "$email", "traits": {"Email": "Ann@Example.COM",
    ...                 "mobile": "+44 7123 456789", "utm_source": "ads"}}, kind="lead")
    Lead(email='ann@example.com', phone='+447123456789', ..., traits={'utm_source': 'ads'})

Rules where clients disagree with each other:

- Shapes: flat, wrapped (``{"contact": {...}}`` or ``{"lead": {...}}``, either on
  either kind) and ConveYour/Segment style (``{"id": "$email", "traits": {...}}``).
  ``traits`` is merged into the top level (which wins ties, see below). A top-level
  ``id`` starting with ``$`` only names the identifying trait and is dropped; any
  other ``id`` is kept as custom trait ``id``.
- Several keys for one canonical field (``phone`` and ``mobile``): the first
  non-empty one wins in this order: the canonical name, then the aliases in
  :data:`ALIASES` order, then top level before ``traits``, then the exact spelling
  before others (``phone`` before ``Phone``), then the order sent. Every non-empty
  loser is kept as a custom trait under its original name.
- Two custom traits with the same name, one at the top level and one in
  ``traits``: the top-level one keeps the name, the other is kept as ``traits.<name>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final, Literal

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, region_code_for_country_code

# Private helpers of phonenumbers, for the E.164 fast path; pinned by its equivalence test.
from phonenumbers.phonenumberutil import ValidationResult
from phonenumbers.phonenumberutil import (
    _maybe_strip_national_prefix_carrier_code as _strip_national_prefix,
)
from phonenumbers.phonenumberutil import _test_number_length as _length_check

from relay.errors import FieldError, ValidationFailed
from relay.models import CANONICAL_FIELDS, Contact, Lead
from relay.trackevents import EVENTS_FIELD, check_events

__all__ = [
    "ALIASES",
    "REQUIRE_ONE_OF",
    "normalize_email",
    "normalize_item",
    "normalize_phone",
    "unflatten",
]

#: RFC 5321 limits a forward path to 256 octets, i.e. 254 for the address itself.
MAX_EMAIL_CHARS: Final = 254
#: Fits a VARCHAR(255) column in every CRM relay delivers to.
MAX_FIELD_CHARS: Final = 255
#: Street addresses are sent as one multi-line field; give them room.
MAX_ADDRESS_CHARS: Final = 500
#: Bounds the work and storage of one event; real forms send a few dozen fields.
MAX_CUSTOM_TRAITS: Final = 200
#: Longer names are not field names but data in the wrong place.
MAX_TRAIT_NAME_CHARS: Final = 100
#: Room for a free-text message field, not for a file.
MAX_TRAIT_STRING_CHARS: Final = 10_000
#: Containers (objects or arrays) nested in one custom trait value.
MAX_TRAIT_DEPTH: Final = 5

#: Canonical field -> other names clients use for it, in priority order (after the
#: canonical name itself). Names are compared after :func:`_canonical_key`.
#: ``title`` is a salutation and deliberately not an alias of ``job_title``.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "email": ("email_address", "e_mail", "mail"),
    "phone": (
        "mobile",
        "telephone",
        "phone_number",
        "mobile_phone",
        "mobile_number",
        "cell",
        "cell_phone",
        "tel",
    ),
    "first_name": ("fname", "given_name", "firstname"),
    "last_name": ("lname", "surname", "family_name", "lastname"),
    "name": ("full_name", "fullname", "contact_name"),
    "company": ("company_name", "organization", "organisation", "org", "business_name"),
    "job_title": ("jobtitle", "position", "role", "job"),
    "postcode": ("zip", "zip_code", "zipcode", "postal_code", "post_code"),
    "state": ("province", "region", "state_province"),
    "address": ("street", "street_address", "address_line1", "address1", "address_line_1"),
    "website": ("url", "web", "site", "homepage"),
    "country": ("country_code", "country_name"),
}

#: An item must carry at least one of these (non-empty).
REQUIRE_ONE_OF: Final = ("email", "phone")

# canonical key -> (field, rank); rank 0 is the field's own name.
_FIELD_OF: Final[dict[str, tuple[str, int]]] = {f: (f, 0) for f in CANONICAL_FIELDS} | {
    alias: (field, rank)
    for field, aliases in ALIASES.items()
    for rank, alias in enumerate(aliases, start=1)
}
_MAX_CHARS: Final = {"email": MAX_EMAIL_CHARS, "address": MAX_ADDRESS_CHARS}
_WRAPPERS: Final = frozenset({"contact", "lead"})

_FLAT_HINT = re.compile(r"__|[.\[]")  # a key that unflatten would split
_FLAT_KEY = re.compile(r"(?P<head>[^\[\]]+)(?P<tail>(?:\[[^\[\]]*\])*)")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_SEP = re.compile(r"__|\.")
_ACRONYM_WORD = re.compile(r"([A-Z]+)([A-Z][a-z])")  # "ZIPCode" -> "ZIP_Code"
_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")  # "firstName" -> "first_Name"
_SEPARATORS = re.compile(r"[\s\-_]+")

_E164: Final = phonenumbers.PhoneNumberFormat.E164
#: Plain ASCII addresses that email-validator accepts unchanged (but for case): checked
#: here without it, a third of the cost of an ingest request. Anything else (quoting,
#: IDNA, a numeric or special-use top-level domain, a doubled hyphen) goes to it.
#: tests/test_normalize.py checks this against email-validator on many addresses.
_PLAIN_EMAIL: Final = re.compile(
    r"[a-z0-9_+-]{1,64}(?:\.[a-z0-9_+-]+)*@"
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}",
    re.IGNORECASE | re.ASCII,
)
_SPECIAL_USE: Final = tuple(SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_USE_SUFFIXES: Final = tuple("." + d for d in _SPECIAL_USE)
#: ``+`` then 7 to 15 ASCII digits, the first not 0: E.164's shape, for :func:`_e164_quick`.
_E164_SHAPE: Final = re.compile(r"\+[1-9][0-9]{6,14}")
_KEEP_UNSTRIPPED: Final = (
    ValidationResult.TOO_SHORT,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
    ValidationResult.INVALID_LENGTH,
)
_POSSIBLE: Final = (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY)
_PHONE_MSG: Final = (
    "not a phone number that can be written in E.164 (+ country code and number); "
    "include the country code, e.g. +44 7123 456789"
)
_MISSING: Final[Any] = object()


@lru_cache(maxsize=4096)
def _split_key(key: str) -> tuple[tuple[str, ...], bool]:
    """Path of a flattened key and whether it ends in ``[]`` (append to a list).

    A key that is not well-formed (``a..b``, ``[x]``, ``a[b``) stays one segment.
    """
    m = _FLAT_KEY.fullmatch(key)
    if m is None:
        return (key,), False
    inner = _BRACKET.findall(m["tail"])
    append = bool(inner) and inner[-1] == ""
    path = (*_SEP.split(m["head"]), *(inner[:-1] if append else inner))
    if "" in path:
        return (key,), False
    return path, append


def unflatten(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Nest flattened keys: ``traits__city``, ``traits.city``, ``traits[city]`` -> ``traits.city``.

    A path given more than once collects its values in a list, in order, and a
    ``tags[]`` key always makes a list. Paths are placed shallowest first. A key
    that would have to descend into a value that is not an object (``traits=foo``
    with ``traits[city]=Dallas``) is a conflict: :class:`ValidationFailed` names
    each such key as sent. Values that are already objects are merged into, never
    mutated.
    """
    parsed = [(key, *_split_key(key), value) for key, value in pairs]
    parsed.sort(key=lambda p: len(p[1]))  # stable: repeated keys keep their order
    out: dict[str, Any] = {}
    owned: set[int] = set()  # ids of the dicts and lists built here (safe to change)
    errors: list[FieldError] = []
    for key, path, append, value in parsed:
        node = out
        for depth, seg in enumerate(path[:-1]):
            child = node.get(seg, _MISSING)
            if child is _MISSING or (isinstance(child, dict) and id(child) not in owned):
                child = node[seg] = {} if child is _MISSING else dict(child)
                owned.add(id(child))
            elif not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                msg = f"conflicts with {where!r}, which was sent as {_json_type(child)}, not fields"
                errors.append({"loc": [key], "msg": msg})
                break
            node = child
        else:
            _put(node, path[-1], value, append=append, owned=owned)
    if errors:
        raise ValidationFailed(_detail("item", errors), errors=errors)
    return out


def _put(node: dict[str, Any], seg: str, value: Any, *, append: bool, owned: set[int]) -> None:
    """Set ``node[seg]``, turning a repeat into a list of every value given."""
    current = node.get(seg, _MISSING)
    if isinstance(current, list) and id(current) in owned:
        current.append(value)
        return
    if current is _MISSING and not append:
        node[seg] = value
        return
    if current is _MISSING:
        new = [value]
    elif isinstance(current, list) and append:
        new = [*current, value]  # a list sent as a value, extended by ``key[]``
    else:
        new = [current, value]
    owned.add(id(new))
    node[seg] = new


@lru_cache(maxsize=4096)
def _canonical_key(key: str) -> str:
    """``firstName``, ``FirstName``, ``first name``, ``First-Name`` -> ``first_name``."""
    snake = _LOWER_UPPER.sub(r"\1_\2", _ACRONYM_WORD.sub(r"\1_\2", key.strip()))
    return _SEPARATORS.sub("_", snake).strip("_").lower()


def _maybe_unflatten(obj: dict[Any, Any]) -> dict[Any, Any]:
    if any(isinstance(k, str) and _FLAT_HINT.search(k) for k in obj):
        return unflatten((str(k), v) for k, v in obj.items())
    return obj


def _json_type(value: Any) -> str:
    """How a client would name the JSON type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return "an array" if isinstance(value, list | tuple) else type(value).__name__


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _unwrapped(item: dict[Any, Any]) -> tuple[dict[Any, Any], list[str | int]]:
    """The item unflattened and out of its wrapper (``{"lead": {...}}``), and the
    ``loc`` prefix that the wrapper adds to its fields."""
    item, prefix = _maybe_unflatten(item), list[str | int]()
    if len(item) == 1:
        ((key, inner),) = item.items()
        if isinstance(key, str) and key.strip().lower() in _WRAPPERS and isinstance(inner, dict):
            try:
                item, prefix = _maybe_unflatten(inner), [key]
            except ValidationFailed as exc:
                errors: list[FieldError] = [{**e, "loc": [key, *e["loc"]]} for e in exc.errors]
                raise ValidationFailed(_detail("item", errors), errors=errors) from None
    return item, prefix


def _entries(
    item: dict[Any, Any], prefix: list[str | int]
) -> list[tuple[str, Any, list[str | int], int]]:
    """Every field of an unwrapped item as ``(name, value, loc, source)``; source 0 is
    top level, 1 traits."""
    top: list[tuple[str, Any, list[str | int], int]] = []
    traits: list[tuple[str, Any, list[str | int], int]] = []
    for key, value in item.items():
        name = str(key)
        if isinstance(value, dict) and _canonical_key(name) == "traits" and not traits:
            traits = [(str(k), v, [*prefix, name, str(k)], 1) for k, v in value.items()]
        elif not (name == "id" and isinstance(value, str) and value.startswith("$")):
            top.append((name, value, [*prefix, name], 0))
    return top + traits


def _to_text(value: Any) -> str | None:
    """Canonical text of a value (numbers become digits), or None when it is not text."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _phone(text: str, region: str) -> str | None:
    """E.164 form of a phone number, or None when it cannot be one."""
    if _E164_SHAPE.fullmatch(text):
        quick = _e164_quick(text[1:])
        if quick is not False:
            return quick
    candidates = [text]
    if text.startswith("00"):  # the ITU international prefix, which e.g. US parsing ignores
        candidates.append("+" + text[2:])
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, _E164)
    return None


def _e164_quick(digits: str) -> str | Literal[False] | None:
    """What :func:`_phone` answers for ``+`` and ``digits`` (already E.164 in shape), by
    phonenumbers' own steps for such a number without its general parsing (three quarters
    of its cost); False when the country code is not one phonenumbers knows.

    The steps are ``phonenumbers.parse``'s for a number written with ``+``: the country
    code is the shortest known prefix; a national prefix is stripped when what remains
    still has a possible length; then ``is_possible_number``. tests/test_normalize.py
    checks this against the library on every country code.
    """
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return False
    national = digits[size:]
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        code, region_code_for_country_code(code)
    )
    if metadata is None:
        return False
    _, stripped, _ = _strip_national_prefix(national, metadata)
    if _length_check(stripped, metadata) not in _KEEP_UNSTRIPPED:
        national = stripped
    if _length_check(national, metadata) in _POSSIBLE:
        return f"+{code}{national}"
    return None


def _plain_email(text: str) -> bool:
    """Whether email-validator would accept ``text`` as it is (see :data:`_PLAIN_EMAIL`)."""
    if len(text) > 254 or not _PLAIN_EMAIL.fullmatch(text):
        return False
    local, _, domain = text.lower().rpartition("@")
    if len(local) > 64 or "--" in domain:
        return False
    tld = domain.rsplit(".", 1)[1]
    return tld not in _SPECIAL_USE and not domain.endswith(_SPECIAL_USE_SUFFIXES)


def _check_field(field: str, text: str, region: str) -> tuple[str | None, str | None]:
    """``(value to store, error message)`` for one canonical field's text."""
    limit = _MAX_CHARS.get(field, MAX_FIELD_CHARS)
    if len(text) > limit:
        return None, f"too long: {len(text)} characters, at most {limit}"
    if field == "email":
        if _plain_email(text):
            return text.lower(), None
        try:
            return validate_email(text, check_deliverability=False).normalized.lower(), None
        except EmailNotValidError as exc:
            return None, f"not a valid email address: {str(exc).rstrip('.')}"
    if field == "phone":
        e164 = _phone(text, region)
        return (e164, None) if e164 else (None, _PHONE_MSG)
    return text, None


def normalize_email(text: str) -> str | None:
    """``text`` as ingest stores an email (lowercased, normalized), or None when ingest
    would refuse it: what a search by email looks for."""
    return _check_field("email", text.strip(), "US")[0]


def normalize_phone(text: str, *, default_region: str = "US") -> str | None:
    """``text`` as ingest stores a phone (E.164; spaces, dashes, dots, parentheses and a
    ``+`` or ``00`` prefix as people type them), or None when ingest would refuse it."""
    return _check_field("phone", text.strip(), default_region)[0]


def _coerce(value: Any, depth: int = 0) -> Any:
    """Zapier and form bodies send every value as text: ``"true"``/``"false"`` in a custom
    field become booleans. Digits stay text: ``"02134"`` is a postcode, not 2134."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if depth >= MAX_TRAIT_DEPTH:
        return value  # too deep: _check_custom rejects it
    if isinstance(value, dict):
        return {k: _coerce(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v, depth + 1) for v in value]
    return value


def _check_custom(value: Any, loc: list[str | int], depth: int, errors: list[FieldError]) -> None:
    """Report custom trait values that are too long, too deep, or not JSON."""
    if isinstance(value, str):
        if len(value) > MAX_TRAIT_STRING_CHARS:
            msg = f"too long: {len(value)} characters, at most {MAX_TRAIT_STRING_CHARS}"
            errors.append({"loc": loc, "msg": msg})
    elif isinstance(value, dict | list):
        if depth >= MAX_TRAIT_DEPTH:
            msg = f"nested too deeply: at most {MAX_TRAIT_DEPTH} levels of objects and arrays"
            errors.append({"loc": loc, "msg": msg})
            return
        pairs = (
            ((str(k), v) for k, v in value.items()) if isinstance(value, dict) else enumerate(value)
        )
        for k, v in pairs:
            _check_custom(v, [*loc, k], depth + 1, errors)
    elif not (value is None or isinstance(value, int | float)):
        msg = f"expected a JSON value (text, number, object, ...), got {type(value).__name__}"
        errors.append({"loc": loc, "msg": msg})


def _detail(kind: str, errors: list[FieldError]) -> str:
    """One sentence naming the count and the first few problems."""
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or kind}: {e['msg']}" for e in errors[:3])
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    count = "1 problem" if len(errors) == 1 else f"{len(errors)} problems"
    return f"{count} in this {kind}: {shown}{more}"


def normalize_item(
    raw: Any, *, kind: Literal["contact", "lead"], default_region: str = "US"
) -> Contact | Lead:
    """Check one ingest item and return it as a frozen :class:`Contact` or :class:`Lead`.

    ``default_region`` is the ISO 3166 country assumed for phone numbers written
    without a country code. Raises :class:`ValidationFailed` listing every problem.
    """
    if not isinstance(raw, dict):
        msg = f"expected a JSON object with contact fields, got {_json_type(raw)}"
        errors: list[FieldError] = [{"loc": [], "msg": msg}]
        raise ValidationFailed(_detail(kind, errors), errors=errors)
    errors = []
    tracks: list[dict[str, Any]] = []
    item, prefix = _unwrapped(raw)
    if EVENTS_FIELD in item:  # not a field of the contact: what it did (relay.trackevents)
        item = dict(item)
        tracks, errors = check_events(item.pop(EVENTS_FIELD))
        errors = [{**e, "loc": [*prefix, *e["loc"]]} for e in errors]
    entries = _entries(item, prefix)
    # For each canonical field, the non-empty candidate with the best priority wins.
    best: dict[str, tuple[tuple[int, int, int, int], int]] = {}
    for i, (name, value, _, source) in enumerate(entries):
        canon = _canonical_key(name)
        if canon in _FIELD_OF and not _is_empty(value):
            field, rank = _FIELD_OF[canon]
            priority = (rank, source, name != canon, i)
            if field not in best or priority < best[field][0]:
                best[field] = (priority, i)
    winners = {i: field for field, (_, i) in best.items()}

    fields: dict[str, str] = {}
    custom: dict[str, Any] = {}
    for i, (name, value, loc, source) in enumerate(entries):
        if i in winners:
            field = winners[i]
            text = _to_text(value)
            if text is None:
                msg = f"expected text (a string or a number), got {_json_type(value)}"
                errors.append({"loc": loc, "msg": msg})
                continue
            stored, problem = _check_field(field, text, default_region)
            if problem is not None:
                errors.append({"loc": loc, "msg": problem})
            elif stored is not None:
                fields[field] = stored
        elif _canonical_key(name) in _FIELD_OF and _is_empty(value):
            continue  # an empty canonical field is absent, not a trait
        else:
            key = f"traits.{name}" if source == 1 and name in custom else name
            if len(name) > MAX_TRAIT_NAME_CHARS:
                msg = f"field name too long: {len(name)} characters, at most {MAX_TRAIT_NAME_CHARS}"
                errors.append({"loc": loc, "msg": msg})
            _check_custom(value, loc, 0, errors)
            custom[key] = _coerce(value)

    if len(custom) > MAX_CUSTOM_TRAITS:
        msg = f"too many custom fields: {len(custom)} given, at most {MAX_CUSTOM_TRAITS}"
        errors.append({"loc": [], "msg": msg})
    if not any(field in best for field in REQUIRE_ONE_OF):
        msg = "provide an email or a phone number (none was given)"
        errors.insert(0, {"loc": [], "msg": msg})
    if errors:
        raise ValidationFailed(_detail(kind, errors), errors=errors)
    model = Lead if kind == "lead" else Contact
    return model.model_validate({**fields, "traits": custom, "events": tracks})
