"""Integrations in a real browser: add a webhook pointing at a local receiver, press "Send test
event", and see a delivery arrive that the Standard Webhooks reference library accepts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import standardwebhooks

from tests.dashboard.browser.conftest import log_in
from tests.dashboard.test_webhooks import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def test_owner_adds_a_webhook_and_a_signed_test_event_arrives(
    live: dict[str, Any],
    page: Any,
    receiver: Receiver,
) -> None:
    log_in(page, live["url"], "owner@clinic.test")
    page.get_by_role("link", name="Integrations").click()
    page.wait_for_url("**/integrations")
    assert "No webhooks yet" in page.content()

    page.get_by_label("URL", exact=True).fill(receiver.url)
    page.get_by_label("Description (optional)").fill("Our CRM")
    page.get_by_label("lead.created").uncheck()
    page.get_by_role("button", name="Add webhook").click()
    secret = page.locator("#created-secret code.secret").inner_text()
    assert secret.startswith("whsec_")
    row = page.locator("#webhooks tbody tr")
    assert row.count() == 1 and "lead.created" not in row.inner_text()

    row.get_by_role("button", name="Send test event").click()
    result = row.locator(".test-result")
    result.wait_for()
    assert "Test event delivered: HTTP 204" in result.inner_text()
    [got] = receiver.wait_for(1)
    body = standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    assert body["type"] == "webhook.test" and body["data"]["business_id"] == "clinic"

    # The secret can be shown again, and the delivery is in the endpoint's log.
    row.get_by_role("button", name="Show secret").click()
    row.locator(".webhook-result code.secret").wait_for()
    assert row.locator(".webhook-result code.secret").inner_text() == secret
    row.get_by_role("link", name=receiver.url).click()
    page.wait_for_url("**/integrations/webhooks/wh_*")
    log = page.locator("#deliveries tbody")
    assert "webhook.test" in log.inner_text() and "delivered" in log.inner_text()
    assert got.headers["webhook-id"] in log.inner_text()
