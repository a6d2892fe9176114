"""A simulated Twilio Voice: signed webhook posts and a ConversationRelay websocket client.

Twilio calls our public URL (`public_base_url`, e.g. https://desk.example) while the app under test
listens on 127.0.0.1; like a TLS-terminating proxy, this fake signs the public URL with
`RequestValidator.compute_signature` and delivers the request to the local address.

    twilio = FakeTwilioVoice(app_url="http://127.0.0.1:8123", public_url="https://desk.example",
                             auth_token=TOKEN)
    twiml = await twilio.post("/twilio/voice", CallSid="CA1", From="+1202...", To="+1202...")
    async with twilio.relay(twiml.relay_url, call_sid="CA1", ...) as relay:
        reply = await relay.say("I'd like a cleaning")   # a prompt, then the tokens until last
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect

SIGNATURE = "X-Twilio-Signature"


@dataclass
class TwiML:
    """A TwiML answer, parsed."""

    status: int
    xml: str
    root: ElementTree.Element | None

    @property
    def verbs(self) -> list[str]:
        return [] if self.root is None else [child.tag for child in self.root]

    def find(self, path: str) -> ElementTree.Element:
        assert self.root is not None, self.xml
        element = self.root.find(path)
        assert element is not None, f"no {path} in {self.xml}"
        return element

    @property
    def relay_url(self) -> str:
        return self.find("Connect/ConversationRelay").attrib["url"]

    @property
    def said(self) -> str:
        assert self.root is not None, self.xml
        return " ".join((e.text or "") for e in self.root.iter("Say"))


@dataclass
class Turn:
    """What the server sent in answer to one prompt."""

    tokens: list[str] = field(default_factory=list)
    end: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens).strip()

    @property
    def handoff(self) -> dict[str, Any] | None:
        if self.end is None or "handoffData" not in self.end:
            return None
        data: dict[str, Any] = json.loads(self.end["handoffData"])
        return data


class FakeTwilioVoice:
    def __init__(self, *, app_url: str, public_url: str, auth_token: str) -> None:
        self.app_url = app_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.http = httpx.AsyncClient(base_url=self.app_url, timeout=30)

    async def aclose(self) -> None:
        await self.http.aclose()

    def sign(self, url: str, params: dict[str, str]) -> str:
        return str(self.validator.compute_signature(url, params))

    async def post(
        self, path: str, *, query: str = "", signature: str | None = "sign", **params: str
    ) -> TwiML:
        """POST a webhook form as Twilio does; `signature=None` leaves the header out."""
        target = path + (f"?{query}" if query else "")
        headers = {}
        if signature == "sign":
            headers[SIGNATURE] = self.sign(self.public_url + target, params)
        elif signature is not None:
            headers[SIGNATURE] = signature
        response = await self.http.post(target, data=params, headers=headers)
        root = None
        if response.headers.get("content-type", "").startswith(("application/xml", "text/xml")):
            root = ElementTree.fromstring(response.text)
        return TwiML(status=response.status_code, xml=response.text, root=root)

    @asynccontextmanager
    async def relay(
        self,
        url: str,
        *,
        call_sid: str,
        from_number: str,
        to_number: str,
        signature: str | None = "sign",
        setup: bool = True,
    ) -> AsyncIterator[RelayClient]:
        """Open the relay websocket at `url` (a public wss:// URL from TwiML) and send `setup`."""
        parts = urlsplit(url)
        local = self.app_url.replace("http", "ws", 1) + parts.path
        if parts.query:
            local += f"?{parts.query}"
        headers = {}
        if signature == "sign":
            headers[SIGNATURE] = self.sign(url, {})
        elif signature is not None:
            headers[SIGNATURE] = signature
        async with connect(local, additional_headers=headers, open_timeout=5) as ws:
            client = RelayClient(ws)
            if setup:
                await client.send(
                    {
                        "type": "setup",
                        "sessionId": "VX" + call_sid[2:],
                        "accountSid": "AC0",
                        "parentCallSid": "",
                        "callSid": call_sid,
                        "from": from_number,
                        "to": to_number,
                        "forwardedFrom": to_number,
                        "callType": "PSTN",
                        "callerName": "",
                        "direction": "inbound",
                        "callStatus": "RINGING",
                        "customParameters": {},
                    }
                )
            yield client


class RelayClient:
    """Twilio's side of a ConversationRelay websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def prompt(self, text: str, *, last: bool = True) -> None:
        await self.send({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": last})

    async def interrupt(self, heard: str, *, ms: int = 900) -> None:
        await self.send(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": heard,
                "durationUntilInterruptMs": str(ms),
            }
        )

    async def dtmf(self, digit: str) -> None:
        await self.send({"type": "dtmf", "digit": digit})

    async def receive(self, *, wait: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), wait)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def turn(self, *, wait: float = 10.0) -> Turn:
        """Collect `text` tokens until `last`, or an `end`."""
        turn = Turn()
        while True:
            message = await self.receive(wait=wait)
            if message["type"] == "end":
                turn.end = message
                return turn
            assert message["type"] == "text", message
            if message["last"]:
                return turn
            turn.tokens.append(message["token"])

    async def say(self, text: str, *, wait: float = 10.0) -> Turn:
        await self.prompt(text)
        return await self.turn(wait=wait)
