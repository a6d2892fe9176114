"""A local server speaking Twilio's REST API for sending SMS, so the real `twilio.rest.Client`
is what the tests exercise.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP Basic auth (account SID and auth
token) and form fields `To`, `From`, `Body` answers 201 with a Message resource (`sid` "SM...",
`status` "queued", ...), as documented. Errors use Twilio's error body (`code`, `message`,
`more_info`, `status`). `fail_next(n)` makes the next `n` sends answer 500 first, to prove retry
(`status=` another status, `retry_after=` with that `Retry-After` header). `unsubscribe(number)`
stands for a STOP Twilio holds: sends to it answer 400 with error 21610 ("Attempt to send to
unsubscribed recipient"). `GET .../Messages.json` lists the messages sent (To, From, PageSize
filters), as Twilio's list does. A send's optional `StatusCallback` is kept on the message
(`status_callback`), for a test to post the callbacks Twilio would.

    rest = FakeTwilioRest(account_sid="AC...", auth_token="...").start()
    ... Settings(twilio_api_base_url=rest.base_url) ...
    rest.wait_for(1)  # the first message, or AssertionError after a timeout
    rest.stop()
"""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer


@dataclass(frozen=True)
class SentMessage:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakeTwilioRest:
    def __init__(self, *, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[SentMessage] = []
        self.attempts = 0
        self._failures: list[tuple[int, str | None]] = []
        self.unsubscribed: set[str] = set()
        self.delay = 0.0  # seconds each send takes to answer (a slow API, for kill tests)
        self._changed = threading.Condition()
        app = Starlette(
            routes=[
                Route("/2010-04-01/Accounts/{sid}/Messages.json", self._create, methods=["POST"]),
                Route("/2010-04-01/Accounts/{sid}/Messages.json", self._list, methods=["GET"]),
            ]
        )
        self._loop_server = LoopbackServer(app, name="fake Twilio REST server")
        self.port = self._loop_server.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeTwilioRest:
        self._loop_server.start()
        return self

    def stop(self) -> None:
        self._loop_server.stop()

    def fail_next(
        self, count: int = 1, *, status: int = 500, retry_after: str | None = None
    ) -> None:
        """The next `count` sends answer `status`, with `Retry-After: retry_after` when set."""
        with self._changed:
            self._failures.extend([(status, retry_after)] * count)

    def unsubscribe(self, number: str) -> None:
        self.unsubscribed.add(number)

    def wait_for(self, count: int, *, timeout: float = 5.0) -> list[SentMessage]:
        """Block until `count` messages were accepted; the messages so far."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} SMS, got {len(self.messages)}")
            return list(self.messages)

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user == self.account_sid and password == self.auth_token

    async def _create(self, request: Request) -> JSONResponse:
        sid = request.path_params["sid"]
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._changed:
            self.attempts += 1
            failure = self._failures.pop(0) if self._failures else None
        if not self._authorised(request) or sid != self.account_sid:
            return _error(401, 20003, "Authenticate")
        if failure is not None:
            status, retry_after = failure
            answer = _error(status, 20500, "Internal Server Error")
            if retry_after is not None:
                answer.headers["Retry-After"] = retry_after
            return answer
        to, from_, body = (str(form.get(k) or "") for k in ("To", "From", "Body"))
        if to in self.unsubscribed:
            return _error(400, 21610, "Attempt to send to unsubscribed recipient")
        if not to.startswith("+"):
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not body:
            return _error(400, 21602, "Message body is required.")
        message = SentMessage(
            sid="SM" + uuid.uuid4().hex,
            to=to,
            from_=from_,
            body=body,
            status_callback=form.get("StatusCallback") or None,
        )
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
        return JSONResponse(self._resource(message), status_code=201)

    async def _list(self, request: Request) -> JSONResponse:
        """`GET .../Messages.json?To=&From=&PageSize=`: the account's messages, most recent
        first, filtered by To and From, one page (Twilio's list envelope)."""
        sid = request.path_params["sid"]
        if not self._authorised(request) or sid != self.account_sid:
            return _error(401, 20003, "Authenticate")
        q = request.query_params
        size = min(int(q.get("PageSize") or 50), 1000)
        with self._changed:
            found = [
                m
                for m in reversed(self.messages)
                if m.to == q.get("To", m.to) and m.from_ == q.get("From", m.from_)
            ][:size]
        uri = f"/2010-04-01/Accounts/{sid}/Messages.json?PageSize={size}&Page=0"
        return JSONResponse(
            {
                "messages": [self._resource(m) for m in found],
                "end": max(len(found) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": size,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }
        )

    def _resource(self, m: SentMessage) -> dict[str, Any]:
        now = format_datetime(m.created)
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": m.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": m.from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": m.sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{m.sid}/Media.json"
            },
            "to": m.to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{m.sid}.json",
        }


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "status": status,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
        },
        status_code=status,
    )
