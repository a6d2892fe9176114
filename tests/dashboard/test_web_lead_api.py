"""The lead status workflow through the JSON API."""

from __future__ import annotations

import httpx

from tests.dashboard.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_lead_status_through_the_api(
    anonymous: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    url = f"/api/v1/leads/{leads['bob']}"
    assert (await anonymous.get(url)).status_code == 401
    r = await anonymous.post(
        f"{url}/status",
        params={"business": "clinic"},
        headers=AUTH,
        json={"status": "contacted", "note": "Called back"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "contacted"
    assert body["history"][0] | {"at": None} == {
        "from_status": "new",
        "to_status": "contacted",
        "note": "Called back",
        "actor": "api",
        "at": None,
    }
    r = await anonymous.post(
        f"{url}/status", params={"business": "clinic"}, headers=AUTH, json={"status": "sold"}
    )
    assert r.status_code == 422
    # Another business's lead is not found under this business.
    r = await anonymous.get(
        f"/api/v1/leads/{leads['salon']}", params={"business": "clinic"}, headers=AUTH
    )
    assert r.status_code == 404
    r = await anonymous.get(url, params={"business": "clinic"}, headers=AUTH)
    assert r.json()["history"][0]["note"] == "Called back"
