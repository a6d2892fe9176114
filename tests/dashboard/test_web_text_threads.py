"""Text threads beside calls: the leads list says which came by text and which by phone, and a
thread's lead page shows the texts as a thread, not a call."""

from __future__ import annotations

from datetime import timedelta

import httpx

from booking.db import session_scope
from booking.models import Call
from booking.scheduler import Scheduler
from tests.conftest import NOW


async def test_text_threads_show_beside_calls(
    owner: httpx.AsyncClient, scheduler: Scheduler
) -> None:
    with session_scope(scheduler.engine, write=True) as s:
        for sid, channel, number in (
            ("SMthread", "sms", "+12025557001"),
            ("CAcall", "relay", "+12025557002"),
        ):
            s.add(
                Call(
                    id=f"call_{channel}",
                    business_id="clinic",
                    call_sid=sid,
                    from_number=number,
                    channel=channel,
                    status="completed",
                    started_at=NOW - timedelta(minutes=30),
                    duration_seconds=300,
                    transcript=[
                        {"role": "caller", "text": "Can I book a checkup friday?"},
                        {"role": "agent", "text": "Friday 10:00 with Dr. Lee is open."},
                    ],
                )
            )
    texted = await scheduler.record_lead(
        business_id="clinic", phone="+12025557001", name="Zed Texted", call_id="call_sms", now=NOW
    )
    called = await scheduler.record_lead(
        business_id="clinic",
        phone="+12025557002",
        name="Quinn Phoned",
        call_id="call_relay",
        now=NOW,
    )
    page = await owner.get("/leads")
    assert page.status_code == 200
    rows = {
        name: row
        for row in page.text.split("<tr>")
        for name in ("Zed Texted", "Quinn Phoned")
        if name in row
    }
    assert '<span class="badge channel-sms">Text</span>' in rows["Zed Texted"]
    assert '<span class="badge channel-call">Call</span>' in rows["Quinn Phoned"]
    assert "channel-sms" not in rows["Quinn Phoned"]

    page = await owner.get(f"/leads/{texted.id}")
    assert "<h2>Text thread</h2>" in page.text and "texts from +12025557001" in page.text
    assert "Can I book a checkup friday?" in page.text and " min" not in page.text
    page = await owner.get(f"/leads/{called.id}")
    assert "<h2>Call</h2>" in page.text and "5.0 min" in page.text
