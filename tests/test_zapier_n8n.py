"""Requests exactly as Zapier and n8n send them: raw bytes and headers written out.

The shapes come from what each tool puts on the wire: Zapier's "Webhooks by
Zapier" POST action (payload type json or form, "wrap request in array",
every Data value as text, `__` as its flattening separator) and n8n's HTTP
Request node (axios: JSON, urlencoded and form-data bodies, header or query
auth, a batch from "Execute Once").
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


async def _event(client: Client, key: str, event_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/events/{event_id}", headers={"X-API-Key": key})
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


async def test_zapier_json_payload(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads", "read:events")
    body = (
        b'{"email": "Ann@Example.com", "first_name": "Ann", "Last Name": "Lee", '
        b'"phone": "(415) 555-0100", "opted_in": "true", "score": "42", "zip": "02134", '
        b'"traits__city": "Austin"}'
    )
    resp = await client.post(
        "/v1/leads",
        data=body,
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Zapier",
            "Authorization": f"Bearer {key}",
            "Content-Length": str(len(body)),
        },
    )
    assert resp.status == 202, await resp.text()
    payload = (await _event(client, key, (await resp.json())["id"]))["payload"]
    assert payload["email"] == "ann@example.com"
    assert payload["phone"] == "+14155550100"
    assert payload["last_name"] == "Lee"
    assert payload["postcode"] == "02134"
    assert payload["city"] == "Austin"
    assert payload["traits"] == {"opted_in": True, "score": "42"}


async def test_zapier_form_payload(client: Client, make_key: Any) -> None:
    key = await make_key("write:contacts", "read:events")
    body = b"email=bo%40example.com&firstName=Bo&company_name=Acme+Inc&traits__plan=pro&vip=false"
    resp = await client.post(
        "/v1/contacts",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Zapier",
            "X-API-Key": key,
        },
    )
    assert resp.status == 202, await resp.text()
    payload = (await _event(client, key, (await resp.json())["id"]))["payload"]
    assert payload["first_name"] == "Bo"
    assert payload["company"] == "Acme Inc"
    assert payload["traits"] == {"plan": "pro", "vip": False}


async def test_zapier_wrap_request_in_array(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads")
    body = b'[{"email": "cy@example.com", "first_name": "Cy"}]'
    resp = await client.post(
        "/v1/leads",
        data=body,
        headers={"Content-Type": "application/json", "User-Agent": "Zapier", "X-API-Key": key},
    )
    assert resp.status == 202
    doc = await resp.json()
    assert doc["status"] == "queued"
    assert [a["index"] for a in doc["accepted"]] == [0]


async def test_zapier_key_in_the_url(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads")
    resp = await client.post(
        f"/v1/leads?api_key={key}",
        data=b'{"email": "di@example.com"}',
        headers={"Content-Type": "application/json", "User-Agent": "Zapier"},
    )
    assert resp.status == 202


async def test_n8n_json_body_with_header_auth(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads", "read:events")
    body = b'{"email":"ed@example.com","firstName":"Ed","mobile":"+44 7700 900123"}'
    resp = await client.post(
        "/v1/leads",
        data=body,
        headers={
            "accept": "application/json,text/html,application/xhtml+xml,application/xml,"
            "text/*;q=0.9, image/*;q=0.8, */*;q=0.7",
            "content-type": "application/json",
            "authorization": f"Bearer {key}",
            "user-agent": "n8n",
            "Idempotency-Key": "8f2c1e-0",
        },
    )
    assert resp.status == 202, await resp.text()
    payload = (await _event(client, key, (await resp.json())["id"]))["payload"]
    assert payload["phone"] == "+447700900123"
    assert payload["first_name"] == "Ed"


async def test_n8n_form_data_with_query_auth(client: Client, make_key: Any) -> None:
    key = await make_key("write:contacts", "read:events")
    boundary = "--------------------------918375104625938726354021"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="email"\r\n\r\n'
        "fay@example.com\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="traits[city]"\r\n\r\n'
        "Dallas\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="newsletter"\r\n\r\n'
        "true\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    resp = await client.post(
        f"/v1/contacts?api_key={key}",
        data=body,
        headers={
            "content-type": f"multipart/form-data; boundary={boundary}",
            "user-agent": "n8n",
        },
    )
    assert resp.status == 202, await resp.text()
    payload = (await _event(client, key, (await resp.json())["id"]))["payload"]
    assert payload["city"] == "Dallas"
    assert payload["traits"] == {"newsletter": True}


async def test_n8n_execute_once_batch(client: Client, make_key: Any) -> None:
    key = await make_key("write:leads")
    items = [{"email": f"n{i}@example.com", "firstName": f"N{i}"} for i in range(3)]
    items.append({"firstName": "no contact details"})
    resp = await client.post(
        "/v1/leads",
        data=orjson.dumps(items),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    assert resp.status == 207
    doc = await resp.json()
    assert [a["index"] for a in doc["accepted"]] == [0, 1, 2]
    assert doc["rejected"][0]["index"] == 3
    assert doc["rejected"][0]["errors"][0]["loc"] == ["body", 3]
