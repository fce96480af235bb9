"""Form bodies read from their bytes: urlencoded and multipart, strictly decoded."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from relay.api.forms import header_params, multipart_pairs, urlencoded_pairs
from relay.errors import MalformedBody


def _multipart(*parts: bytes, close: bool = True) -> bytes:
    body = b"preamble, ignored\r\n" + b"".join(b"--XyZ\r\n" + p + b"\r\n" for p in parts)
    return body + (b"--XyZ--\r\nepilogue" if close else b"")


def _part(name: str, value: bytes, *headers: str) -> bytes:
    head = [f'Content-Disposition: form-data; name="{name}"', *headers]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + value


def test_urlencoded_plus_blank_and_bare_names() -> None:
    pairs, errors = urlencoded_pairs(b"a=1+2&&b=&c&d=%2B%26%3D\r\n", "utf-8")
    assert (pairs, errors) == ([("a", "1 2"), ("b", ""), ("c", ""), ("d", "+&=")], [])


def test_urlencoded_bad_name_is_named_as_sent() -> None:
    pairs, errors = urlencoded_pairs(b"ok=1&n%FFm=2", "utf-8")
    assert pairs == [("ok", "1")]
    assert errors[0]["loc"] == ["n\\xffm"]
    assert errors[0]["msg"].startswith("the field name is not valid utf-8")


def test_multipart_text_parts_in_order() -> None:
    body = _multipart(
        _part("email", b"a@example.com"),
        _part("note", b"two\r\nlines -- with --XyZ inside"),
        _part("city", b"Dall\xe9s", "Content-Type: text/plain; charset=latin-1"),
        _part("b64", b"RGFsbGFz", "Content-Transfer-Encoding: base64"),
        _part("qp", b"Dall=C3=A9s", "Content-Transfer-Encoding: quoted-printable"),
        _part("empty", b""),
        b"Content-Disposition: form-data; name*=utf-8''na%C3%AFve\r\n\r\nyes",
    )
    pairs, errors = multipart_pairs(body, "XyZ", "utf-8")
    assert errors == []
    assert pairs == [
        ("email", "a@example.com"),
        ("note", "two\r\nlines -- with --XyZ inside"),
        ("city", "Dallés"),
        ("b64", "Dallas"),
        ("qp", "Dallés"),
        ("empty", ""),
        ("naïve", "yes"),
    ]


def test_multipart_refuses_files_and_bad_bytes_by_name() -> None:
    body = _multipart(
        _part("email", b"a@example.com"),
        b'Content-Disposition: form-data; name="cv"; filename="cv.pdf"\r\n\r\n%PDF',
        _part("city", b"Dall\xe9s"),
    )
    pairs, errors = multipart_pairs(body, "XyZ", "utf-8")
    assert pairs == [("email", "a@example.com")]
    assert [e["loc"] for e in errors] == [["cv"], ["city"]]
    assert errors[0]["msg"].startswith("a file, not a text field")


@pytest.mark.parametrize(
    "body",
    [
        _multipart(_part("email", b"a@example.com"), close=False),
        b"no boundary at all",
        _multipart(b"Content-Type: text/plain\r\n\r\nno name"),
        _multipart(_part("x", b"?", "Content-Transfer-Encoding: x-uuencode")),
    ],
    ids=["unclosed", "no-boundary", "no-name", "unknown-encoding"],
)
def test_malformed_multipart_is_400(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        multipart_pairs(body, "XyZ", "utf-8")


def test_header_params_quoted_and_bare() -> None:
    header = r'form-data; name="a \"q\"; b"; filename*=UTF-8; boundary=xy'
    assert header_params(header) == {"name": 'a "q"; b', "filename*": "UTF-8", "boundary": "xy"}


async def test_multipart_file_upload_is_422(client: TestClient[Any, Any], make_key: Any) -> None:
    key = await make_key("write:leads")
    form = FormData()
    form.add_field("email", "a@example.com")
    form.add_field("cv", b"%PDF", filename="cv.pdf", content_type="application/pdf")
    resp = await client.post("/v1/leads", data=form(), headers={"X-API-Key": key})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["loc"] == ["body", "cv"]


async def test_multipart_with_an_idempotency_key_is_read(
    client: TestClient[Any, Any], make_key: Any
) -> None:
    """The key's claim reads the body first; the form is then parsed from those bytes
    (aiohttp's reader found nothing left to read in a body sent with Content-Length, as
    curl -F sends it)."""
    key = await make_key("write:leads", "read:events")
    body = _multipart(_part("email", b"a@example.com"), _part("traits[city]", b"Austin"))
    headers = {
        "X-API-Key": key,
        "Idempotency-Key": "form-1",
        "Content-Type": "multipart/form-data; boundary=XyZ",
    }
    resp = await client.post("/v1/leads", data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    event = await client.get(f"/v1/events/{(await resp.json())['id']}", headers=headers)
    assert (await event.json())["payload"]["city"] == "Austin"
