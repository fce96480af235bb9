"""Form bodies, read from their bytes by relay: strictly, and with the work bounded.

``application/x-www-form-urlencoded`` and ``multipart/form-data`` become
name-value pairs. Every name and value is decoded strictly in the body's (or
the part's) charset: a byte that is not valid there is a 422 naming the field,
never a U+FFFD in its place. Fields are counted on the raw bytes before any is
decoded: more than :data:`~relay.api.bounds.MAX_FORM_FIELDS` is a 413 that says
so. (aiohttp's ``request.post()`` would answer that as "body too large", decode
with replacement characters, and spend about 0.2 ms on each multipart part's
``Content-Disposition``.)
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from typing import Final
from urllib.parse import unquote_to_bytes

from relay.api.bounds import MAX_FORM_FIELDS
from relay.errors import BodyTooLarge, FieldError, MalformedBody

__all__ = ["header_params", "multipart_pairs", "too_many_fields", "urlencoded_pairs"]

Pairs = list[tuple[str, str]]

#: ``; key=value`` or ``; key="quoted \" value"`` in a part's header.
_PARAM: Final = re.compile(
    r';\s*(?P<key>[^\s=;]+)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^;\s]*))'
)
_QUOTED_PAIR: Final = re.compile(r"\\(.)")
_FILE_MSG: Final = "a file, not a text field; file uploads are not accepted"


def too_many_fields() -> BodyTooLarge:
    msg = f"more than {MAX_FORM_FIELDS} fields"
    return BodyTooLarge(
        f"the form has {msg}; a form is one item, send fewer fields",
        errors=[{"loc": ["body"], "msg": msg}],
    )


def urlencoded_pairs(raw: bytes, charset: str) -> tuple[Pairs, list[FieldError]]:
    """Name-value pairs, each decoded strictly, and the fields that would not decode."""
    if raw.count(b"&") >= MAX_FORM_FIELDS:
        raise too_many_fields()
    pairs: Pairs = []
    errors: list[FieldError] = []
    for field in raw.rstrip().split(b"&"):
        if not field:
            continue
        name, value = (unquote_to_bytes(p.replace(b"+", b" ")) for p in field.partition(b"=")[::2])
        _add(pairs, errors, name, value, charset)
    return pairs, errors


def multipart_pairs(raw: bytes, boundary: str, charset: str) -> tuple[Pairs, list[FieldError]]:
    """The text parts of a ``multipart/form-data`` body (RFC 7578) as name-value pairs.

    Files are refused by name; a body without its boundaries, or a part without
    a ``Content-Disposition: form-data; name=...``, is malformed (400).
    """
    delimiter = b"\r\n--" + boundary.encode("ascii", "replace")
    if raw.count(delimiter[2:]) > MAX_FORM_FIELDS + 1:
        raise too_many_fields()
    pieces = (b"\r\n" + raw).split(delimiter)
    # pieces[0] is the preamble; the last real one is followed by "--" (the close delimiter)
    if len(pieces) < 2 or not any(p.startswith(b"--") for p in pieces[1:]):
        raise MalformedBody(
            f"the multipart body does not open and close with its boundary {boundary!r}",
            errors=[{"loc": ["body"], "msg": "boundary not found"}],
        )
    pairs: Pairs = []
    errors: list[FieldError] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        _, _, part = piece.partition(b"\r\n")  # the rest of the delimiter line
        if part.startswith(b"\r\n"):
            head, body = b"", part[2:]
        else:
            head, _, body = part.partition(b"\r\n\r\n")
        headers = _headers(head)
        params = header_params(headers.get("content-disposition", ""))
        name = params.get("name") or _extended(params.get("name*", ""))
        if not headers.get("content-disposition", "").lower().startswith("form-data") or not name:
            raise MalformedBody(
                "a multipart part has no Content-Disposition: form-data; name=...",
                errors=[{"loc": ["body"], "msg": "a part without a name"}],
            )
        if "filename" in params or "filename*" in params:
            errors.append({"loc": [name], "msg": _FILE_MSG})
            continue
        content_type = headers.get("content-type", "text/plain")
        part_charset = header_params(content_type).get("charset")
        value = _transfer_decoded(body, headers.get("content-transfer-encoding", ""), name)
        _add(pairs, errors, name, value, part_charset or charset)
    return pairs, errors


def _headers(head: bytes) -> dict[str, str]:
    try:
        text = head.decode("utf-8")  # names in headers are sent raw, as UTF-8 (RFC 7578 §5.1)
    except UnicodeDecodeError:
        raise MalformedBody(
            "a multipart part's headers are not valid UTF-8",
            errors=[{"loc": ["body"], "msg": "part headers not UTF-8"}],
        ) from None
    headers: dict[str, str] = {}
    for line in text.split("\r\n"):
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers


def header_params(header: str) -> dict[str, str]:
    """The ``; key=value`` parameters of a header (``Content-Type``, ``Content-Disposition``)."""
    return {
        m["key"].lower(): (
            _QUOTED_PAIR.sub(r"\1", m["quoted"]) if m["quoted"] is not None else m["token"]
        )
        for m in _PARAM.finditer(header)
    }


def _extended(value: str) -> str:
    """An RFC 8187 ``name*=utf-8''%E2%82%AC`` value, decoded; "" when there is none."""
    charset, _, rest = value.partition("'")
    _, _, encoded = rest.partition("'")
    try:
        return unquote_to_bytes(encoded).decode(charset or "utf-8") if encoded else ""
    except (UnicodeDecodeError, LookupError):
        return ""


def _transfer_decoded(body: bytes, encoding: str, name: str) -> bytes:
    """A part's bytes without its (deprecated, RFC 7578 §4.7) Content-Transfer-Encoding."""
    encoding = encoding.lower()
    if encoding in ("", "7bit", "8bit", "binary"):
        return body
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    if encoding == "base64":
        try:
            return base64.b64decode(body)
        except binascii.Error:
            pass
    raise MalformedBody(
        f"the part {name!r} has a Content-Transfer-Encoding relay cannot read: {encoding!r}",
        errors=[{"loc": ["body", name], "msg": f"Content-Transfer-Encoding {encoding!r}"}],
    )


def _add(
    pairs: Pairs, errors: list[FieldError], name: str | bytes, value: bytes, charset: str
) -> None:
    try:
        text_name = name if isinstance(name, str) else name.decode(charset)
    except (UnicodeDecodeError, LookupError) as exc:
        shown = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
        errors.append({"loc": [shown], "msg": f"the field name is not valid {charset}: {exc}"})
        return
    try:
        pairs.append((text_name, value.decode(charset)))
    except (UnicodeDecodeError, LookupError) as exc:
        errors.append({"loc": [text_name], "msg": f"not valid {charset}: {exc}"})
