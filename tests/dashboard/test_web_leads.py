"""Leads: the filtered list, search, CSV export, a lead's page and its status history."""

from __future__ import annotations

import csv
import io

import httpx

from tests.dashboard.conftest import post_form


async def test_leads_list_newest_first_with_outcome_caller_and_reason(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    r = await owner.get("/leads")
    assert r.status_code == 200
    text = r.text
    assert text.index(leads["spam"]) < text.index(leads["bob"]) < text.index(leads["ann"])
    assert "Ann Smith" in text and "+12025550001" in text and "Cleaning" in text
    assert "Callback" in text and "Booked" in text
    assert "Sally Salon" not in text  # another business's lead


async def test_leads_filter_by_outcome_date_and_search(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    r = await owner.get("/leads", params={"outcome": "callback"})
    assert leads["bob"] in r.text and leads["ann"] not in r.text and leads["spam"] not in r.text
    # Dates are the business's days: Ann called on Saturday 28 November, New York time.
    r = await owner.get("/leads", params={"from": "2026-11-28", "to": "2026-11-28"})
    assert leads["ann"] in r.text and leads["bob"] not in r.text
    r = await owner.get("/leads", params={"from": "2026-11-29"})
    assert leads["ann"] not in r.text and leads["bob"] in r.text and leads["spam"] in r.text
    r = await owner.get("/leads", params={"q": "smith"})
    assert leads["ann"] in r.text and leads["bob"] not in r.text
    r = await owner.get("/leads", params={"q": "202 555 0002"})
    assert leads["bob"] in r.text and leads["ann"] not in r.text
    r = await owner.get("/leads", params={"q": "%"})
    assert "No leads match" in r.text
    r = await owner.get("/leads", params={"from": "yesterday", "outcome": "nonsense"})
    assert r.status_code == 200
    assert "look like 2026-12-31" in r.text and "unknown outcome" in r.text


async def test_csv_export_holds_the_filtered_leads_without_formulas(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    r = await owner.get("/leads.csv", params={"outcome": "callback"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["id"] for row in rows] == [leads["bob"]]
    assert rows[0]["reason"] == '\'=HYPERLINK("http://evil")'
    assert rows[0]["phone"] == "+12025550002"  # a plain number is not a formula
    r = await owner.get("/leads.csv")
    ids = [row["id"] for row in csv.DictReader(io.StringIO(r.text))]
    assert ids == [leads["spam"], leads["bob"], leads["ann"]]


async def test_lead_page_shows_call_transcript_summary_and_appointment(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    r = await owner.get(f"/leads/{leads['ann']}")
    assert r.status_code == 200
    assert "I&#39;d like a cleaning next Monday." in r.text
    assert "Ann booked a cleaning." in r.text
    assert "Teeth cleaning with" in r.text and "Dr. Lee" in r.text


async def test_status_change_keeps_a_history_with_notes(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    page = f"/leads/{leads['bob']}"
    r = await post_form(
        owner, page, f"{page}/status", {"status": "contacted", "note": "Left a voicemail"}
    )
    assert r.status_code == 303
    r = await post_form(owner, page, f"{page}/status", {"status": "won", "note": "Booked in"})
    assert r.status_code == 303
    text = (await owner.get(page)).text
    assert "New → Contacted" in text and "Left a voicemail" in text
    assert "Contacted → Won" in text and text.index("Contacted → Won") < text.index("Left a")
    r = await owner.get("/leads", params={"status": "won"})
    assert leads["bob"] in r.text and leads["ann"] not in r.text
    r = await post_form(owner, page, f"{page}/status", {"status": "sold"})
    assert r.status_code == 422 and "choose new, contacted, won or lost" in r.text


async def test_staff_accounts_cannot_see_leads(
    staff: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    assert (await staff.get("/leads")).status_code == 403
    assert (await staff.get(f"/leads/{leads['ann']}")).status_code == 403
    assert (await staff.get("/leads.csv")).status_code == 403


async def test_a_filter_date_outside_1970_2199_is_a_problem_not_a_crash(
    owner: httpx.AsyncClient,
    leads: dict[str, str],
) -> None:
    for name in ("from", "to"):
        for value, said in [
            ("9999-12-31", "9999-12-31 is outside the years 1970-2199"),
            ("0001-01-01", "0001-01-01 is outside the years 1970-2199"),
            ("31/12/2026", "must look like 2026-12-31"),
        ]:
            r = await owner.get("/leads", params={name: value})
            assert r.status_code == 200, (name, value)
            assert f"the &#39;{name}&#39; date {said}" in r.text, (name, value)
            assert leads["ann"] in r.text  # the bad date is dropped, not applied
            r = await owner.get("/leads.csv", params={name: value})
            assert r.status_code == 200, (name, value)
            assert leads["ann"] in r.text
    r = await owner.get("/leads", params={"from": "1970-01-01", "to": "2199-12-31"})
    assert r.status_code == 200 and "outside the years" not in r.text
    assert leads["ann"] in r.text and leads["bob"] in r.text
