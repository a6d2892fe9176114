"""Schemathesis against the app's own OpenAPI schema: no generated request may get a 5xx.

Bounded for CI: derandomized, the schema's examples, schemathesis's coverage cases (boundary and
invalid values) and a few generated examples per operation, then a stateful phase that chains
operations along the links schemathesis infers (book, then read, move and cancel what it booked).
Requests go through Starlette's TestClient (schemathesis's ASGI transport is not used), with the
API key, and the edge dates of issue 9 are sent as explicit cases too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from pydantic import SecretStr
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from booking.clock import FixedClock
from booking.db import make_engine, migrate
from booking.scheduler import Scheduler
from frontdesk.app import create_app
from frontdesk.settings import Settings
from tests.conftest import NOW, seed_clinic

KEY = "schemathesis-key-123"
BASE = "http://localhost"
# Generated examples per operation. Schemathesis's deterministic coverage phase (boundary and
# invalid values of every parameter) adds most of the ~1,000 requests; the run takes ~30 s.
EXAMPLES = 3
SENT: Counter[str] = Counter()  # requests sent, and 5xx answers, over the whole module


def _settings(**kw: Any) -> Settings:
    return Settings(api_key=SecretStr(KEY), **kw)


# The schema is read at import time (pytest's fixtures cannot feed `parametrize`).
schema = schemathesis.openapi.from_dict(create_app(_settings()).openapi())
# Our own checks: no 5xx, and every answer documented (status and body).
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
]
BOUNDED = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('st') / 'frontdesk.db'}")
    migrate(engine)
    seed_clinic(engine)
    scheduler = Scheduler(engine=engine, clock=FixedClock(NOW))
    app = create_app(_settings(allow_private_urls=True), scheduler=scheduler)
    # Every refused request is logged at INFO; thousands of them only slow the run down.
    logging.getLogger("dashboard").setLevel(logging.WARNING)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c
    logging.getLogger("dashboard").setLevel(logging.NOTSET)
    engine.dispose()


def send(client: TestClient, case: schemathesis.Case) -> Any:
    """Send `case` through the TestClient, with the API key."""
    kw = case.as_transport_kwargs(base_url=BASE, headers={"Authorization": f"Bearer {KEY}"})
    data, headers = kw.get("data"), dict(kw.get("headers") or {})
    if kw.get("cookies"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in kw["cookies"].items())
    response = client.request(
        kw["method"],
        kw["url"],
        params=kw.get("params"),
        json=kw.get("json"),
        headers=[(k, _raw(v)) for k, v in headers.items()],
        content=data if isinstance(data, bytes | str) else None,
        data=data if isinstance(data, dict) else None,
    )
    SENT["requests"] += 1
    phase = case.meta.phase.name.value if case.meta is not None else "explicit"
    SENT[f"phase {phase}"] += 1
    if response.status_code >= 500:
        SENT["5xx"] += 1
    return response


def _raw(value: str | bytes) -> bytes:
    # Negative cases put any text in a header; send its bytes as a raw client would.
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def check(client: TestClient, case: schemathesis.Case) -> None:
    response = send(client, case)
    case.validate_response(response, checks=CHECKS, excluded_checks=[negative_data_rejection])


@schema.parametrize()
@BOUNDED
def test_no_request_gets_a_server_error(case: schemathesis.Case, client: TestClient) -> None:
    check(client, case)


EDGE = "9999-12-31T23:59:59Z"
EDGE_CASES = [
    (
        "POST",
        "/api/v1/holds",
        {"body": {"service": "cleaning", "staff": "lee", "start": EDGE, "holder": "call-1"}},
    ),
    (
        "POST",
        "/api/v1/appointments",
        {
            "body": {
                "service": "cleaning",
                "staff": "lee",
                "start": EDGE,
                "name": "Ann",
                "phone": "+12025550123",
            }
        },
    ),
    (
        "POST",
        "/api/v1/appointments/{appointment_id}/reschedule",
        {"path_parameters": {"appointment_id": "apt_x"}, "body": {"start": EDGE}},
    ),
    (
        "GET",
        "/api/v1/availability",
        {"query": {"service": "cleaning", "from": "2026-12-07", "to": "2026-12-07", "now": EDGE}},
    ),
    (
        "GET",
        "/api/v1/availability",
        {"query": {"service": "cleaning", "from": "9999-12-31", "to": "9999-12-31"}},
    ),
    ("GET", "/api/v1/appointments", {"query": {"from": "2026-12-01", "to": "2026-12-10"}}),
    ("GET", "/api/v1/appointments", {"query": {"from": "9999-12-31", "to": EDGE}}),
    ("POST", "/api/v1/leads", {"body": {}}),
]


@pytest.mark.parametrize(
    ("method", "path", "parts"), EDGE_CASES, ids=[f"{m} {p} {sorted(x)}" for m, p, x in EDGE_CASES]
)
def test_edge_dates_are_answered_without_a_server_error(
    client: TestClient, method: str, path: str, parts: dict[str, Any]
) -> None:
    case = schema[path][method].Case(**parts)
    response = send(client, case)
    assert response.status_code in {200, 404, 422}, response.text
    case.validate_response(response, checks=CHECKS, excluded_checks=[negative_data_rejection])


StatefulBase = schema.as_state_machine()


class APIWorkflow(StatefulBase):  # type: ignore[misc,valid-type]
    """Chains of calls along the schema's links, against the same app and database."""

    client: TestClient

    def call(self, case: schemathesis.Case, **kwargs: Any) -> Any:
        return Response.from_any(send(self.client, case))

    def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
        case.validate_response(response, checks=CHECKS, excluded_checks=[negative_data_rejection])


def test_stateful_chains_get_no_server_error(client: TestClient) -> None:
    APIWorkflow.client = client
    APIWorkflow.run(
        settings=settings(
            max_examples=10,
            stateful_step_count=5,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


def test_the_run_was_bounded_and_clean() -> None:
    """Runs last: the figures for the whole module (see the report in the CI log)."""
    if not SENT["requests"]:
        pytest.skip("reports on the module's run: select the whole module")
    logging.getLogger(__name__).warning(
        "schemathesis: %d requests, %d answered 5xx (%s)", SENT["requests"], SENT["5xx"], dict(SENT)
    )
    assert SENT["5xx"] == 0
    assert 150 <= SENT["requests"] <= 2000, SENT
